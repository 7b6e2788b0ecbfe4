"""Write a stored draft to the FHIR server as a preliminary DiagnosticReport (the `io` task's body)."""

from __future__ import annotations

from integrations.fhir.client import FhirClient
from integrations.fhir.writeback import write_draft_report
from integrations.store.models import Analysis, Report
from integrations.worker_runtime import WorkerRuntime
from model.report import DraftReport

ACTOR = "veritrace-worker"


def write_back_report(runtime: WorkerRuntime, report_id: str) -> str | None:
    """Returns the DiagnosticReport id; None when there is nowhere to write or nobody to write for."""
    config = runtime.fhir
    with runtime.session_factory() as session:
        report = session.get(Report, report_id)
        if report is None or report.patient_id is None or not config.base_url:
            return None
        if report.fhir_report_id:
            return report.fhir_report_id
        analysis = session.get(Analysis, report.analysis_id)
        identity = (analysis.model_identity if analysis else None) or {}
        draft = DraftReport.model_validate(report.body)
        patient_id, study_uid, analysis_id = report.patient_id, report.study_uid, report.analysis_id
        markdown = report.markdown

    with FhirClient.from_config(config) as client:
        written = write_draft_report(
            client,
            patient_id=patient_id,
            study_uid=study_uid,
            analysis_id=analysis_id,
            conclusion=" ".join(s.text for s in draft.impression)[:1000] or "See findings.",
            statements=[*draft.findings, *draft.impression],
            presented_text=markdown,
            model_device=identity,
        )
    with runtime.session_factory() as session:
        stored = session.get(Report, report_id)
        assert stored is not None
        stored.fhir_report_id = written.id
        session.commit()
    runtime.ledger.append(
        "fhir.write",
        ACTOR,
        {"report_id": report_id, "resource": f"DiagnosticReport/{written.id}", "status": "preliminary"},
        patient_ref=f"Patient/{patient_id}",
        study_uid=study_uid,
    )
    return written.id

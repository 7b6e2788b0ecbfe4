"""FHIR server down during write-back: deferred (audited), retried with backoff, written later."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from integrations.celery_app import WRITEBACK_TASK, make_celery
from integrations.fhir.client import FhirClient
from integrations.fhir.server import LocalFhirServer
from integrations.fhir.synthetic import generate_patients, load_synthetic_patients
from integrations.store.models import Analysis, Report, Study
from model.report import DraftReport
from tests.conftest import free_port
from tests.fault.harness import Deployment, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]
PATIENT = "vt-demo-1"


def _seed_report(deployment: Deployment) -> str:
    """A stored draft as the gpu task leaves it, ready for the io task to write back."""
    with deployment.session() as session, session.begin():
        study = Study(study_uid="1.2.826.0.1.3680043.8.498.77", patient_id=PATIENT, state="stable")
        session.add(study)
        session.flush()
        analysis = Analysis(study_id=study.id, content_digest="0" * 64, status="completed", model_identity={})
        session.add(analysis)
        session.flush()
        report = Report(
            analysis_id=analysis.id,
            patient_id=PATIENT,
            study_uid=study.study_uid,
            summary="AI draft (untrained test model)",
            body=DraftReport(untrained_model=True).model_dump(mode="json"),
            markdown="untrained test output",
            untrained_model=True,
        )
        session.add(report)
        session.flush()
        return report.id


def test_writeback_deferred_while_fhir_down_then_written(
    tmp_path: Path, postgres_url: str, rabbitmq_url: str
) -> None:
    fhir = LocalFhirServer(tmp_path / "fhir", port=free_port())
    fhir.start()
    with FhirClient(fhir.base_url) as client:
        load_synthetic_patients(client, generate_patients(1))
    fhir.stop()

    deployment = Deployment.create(
        tmp_path / "home", database_url=postgres_url, broker_url=rabbitmq_url, fhir_base_url=fhir.base_url
    )
    try:
        assert deployment.run_cli("db", "upgrade").returncode == 0
        report_id = _seed_report(deployment)
        deployment.spawn("worker", "worker", "-Q", "io")
        deployment.wait_log("worker", "ready.")
        app = make_celery(deployment.settings().resolved_broker_url)
        app.send_task(WRITEBACK_TASK, args=[report_id], queue="io", routing_key="io")

        wait_until(
            lambda: deployment.ledger_kinds().count("fhir.write.deferred") >= 2,
            timeout_s=60,
            what="two deferred write-back attempts audited",
        )
        fhir.start()
        wait_until(lambda: "fhir.write" in deployment.ledger_kinds(), timeout_s=120, what="write-back")

        with deployment.session() as session:
            stored = session.scalar(select(Report).where(Report.id == report_id))
            assert stored is not None and stored.fhir_report_id
        with FhirClient(fhir.base_url) as client:
            written = client.read("DiagnosticReport", stored.fhir_report_id)
        assert written["status"] == "preliminary"
        assert written["subject"]["reference"] == f"Patient/{PATIENT}"
        kinds = deployment.ledger_kinds()
        assert kinds.count("fhir.write") == 1
        assert "task.dead_lettered" not in kinds
        deferred = [e for e in deployment.ledger().iter_entries() if e.kind == "fhir.write.deferred"]
        assert [(e.payload or {}).get("attempt") for e in deferred][:2] == [1, 2]
        assert deployment.ledger().verify().ok
    finally:
        deployment.stop_all()
        fhir.stop()

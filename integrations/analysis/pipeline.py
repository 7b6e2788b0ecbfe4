"""One analysis, from spooled instances to a stored draft report: the body of the `gpu` task.

Idempotent on the analysis id: a redelivered message for a completed analysis does nothing, and a rerun of a
half-done one replaces nothing that was already stored. Every step lands in the audit ledger; pixel data and
patient details never do (only ids, digests and counts).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from integrations.analysis.agent_tools import study_tool_registries
from integrations.analysis.patient_context import read_context_for_study
from integrations.analysis.report_markdown import overall_severity, render_report_markdown, summarise
from integrations.dicom.study_files import study_instance_files
from integrations.store.models import Analysis, Report, Study
from integrations.tools.rare_disease_signals import signals_from_trace
from integrations.worker_runtime import WorkerRuntime
from model.context import PatientContext
from model.tools import ToolRegistry
from model.trace import TraceStep
from model.verification import VerifiedReport, verify_report

if TYPE_CHECKING:
    from model.draft import DraftResult
    from model.imaging import ModelImage

log = logging.getLogger(__name__)
ACTOR = "veritrace-worker"


def run_analysis(runtime: WorkerRuntime, analysis_id: str) -> str | None:
    """Run one queued analysis; returns the stored report id, or None when there was nothing to do."""
    from model.imaging import load_model_image
    from model.series_selection import select_frames

    with runtime.session_factory() as session:
        analysis = session.get(Analysis, analysis_id)
        if analysis is None:
            log.warning("analysis %s not found; dropping the message", analysis_id)
            return None
        if analysis.status == "completed":
            existing = session.scalar(select(Report.id).where(Report.analysis_id == analysis_id))
            return existing
        study = session.get(Study, analysis.study_id)
        assert study is not None
        study_uid, dicom_patient_id = study.study_uid, study.patient_id
        paths = study_instance_files(session, analysis_id, runtime.spool())
        # Audited before the status changes: a kill in between leaves an audited start, never a silent one.
        ledger = runtime.ledger
        ledger.append(
            "analysis.started",
            ACTOR,
            {"analysis_id": analysis_id, "instances": len(paths), "attempt": analysis.attempts + 1},
            study_uid=study_uid,
        )
        analysis.status, analysis.started_at = "running", datetime.now(UTC)
        analysis.attempts += 1
        session.commit()
    started = time.perf_counter()

    present = [path for path in paths if path.exists()]
    chosen = select_frames(present, runtime.model.max_images)
    if not chosen:
        # Nothing the model can look at (files gone, or no image objects): a draft from no images would
        # be a report about nothing, so the analysis fails visibly instead.
        mark_failed(runtime, analysis_id, f"no readable images ({len(present)}/{len(paths)} on disk)")
        return None
    images = [load_model_image(path, frame=frame) for path, frame in chosen]
    study_context = read_context_for_study(runtime, dicom_patient_id, study_uid)
    context, patient_ref = study_context.context, study_context.patient_ref

    def record_step(step: TraceStep) -> None:
        steps.append(step.model_dump(mode="json"))

    steps: list[dict[str, Any]] = []
    with study_tool_registries(
        runtime, context.patient_id, paths, patient_matched=patient_ref is not None
    ) as make_registry:
        result, images = _draft_within_memory(runtime, images, context, make_registry, record_step)
    tool_evidence_ids = [item.id for item in result.tool_evidence]
    identity = result.identity.model_dump(mode="json")
    ledger.append(
        "model.invoked",
        ACTOR,
        {
            "analysis_id": analysis_id,
            "model": identity,
            "prompt_sha256": result.prompt_sha256,
            "images": [image.ref.citation_id for image in images],
            "evidence": [item.id for item in context.evidence],
            "tool_evidence": tool_evidence_ids,
        },
        patient_ref=patient_ref,
        study_uid=study_uid,
    )

    verified = verify_report(
        result.report,
        [*context.evidence, *result.tool_evidence],
        [*(image.ref for image in images), *result.tool_image_refs],
        {**study_context.facts, **result.tool_facts},
    )
    report = verified.report
    body = report_body(verified)
    record_step(
        TraceStep(
            kind="verification",
            detail={"verdicts": [verdict.model_dump(mode="json") for verdict in verified.verdicts]},
        )
    )
    ledger.append(
        "report.verified",
        ACTOR,
        {
            "analysis_id": analysis_id,
            "supported": len(verified.supported),
            "rejected": [
                {"section": v.section, "index": v.index, "reason": v.reason.value if v.reason else None}
                for v in verified.rejected
            ],
        },
        patient_ref=patient_ref,
        study_uid=study_uid,
    )
    markdown = render_report_markdown(
        report,
        study_uid=study_uid,
        model_label=f"{identity['architecture']} ({identity['weights_sha256'][:12]})",
        rejected=[(v.statement, v.reason.value if v.reason else "unsupported") for v in verified.rejected],
    )
    trace = {
        "version": 1,
        "analysis_id": analysis_id,
        "model": identity,
        "prompt_sha256": result.prompt_sha256,
        "evidence": [item.model_dump(mode="json") for item in context.evidence],
        "tool_evidence": [item.model_dump(mode="json") for item in result.tool_evidence],
        "images": [image.ref.model_dump(mode="json") for image in images],
        "steps": steps,
        "report": body,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
    body["signals"] = signals_from_trace(trace)
    with runtime.session_factory() as session:
        # A newer analysis of the same study supersedes every older draft of it.
        session.execute(
            update(Report)
            .where(Report.study_uid == study_uid, Report.status == "draft")
            .values(status="superseded")
        )
        stored = Report(
            analysis_id=analysis_id,
            patient_id=patient_ref.removeprefix("Patient/") if patient_ref else None,
            study_uid=study_uid,
            status="draft",
            severity=overall_severity(report),
            summary=summarise(report, rejected=len(verified.rejected)),
            body=body,
            markdown=markdown,
            untrained_model=report.untrained_model,
        )
        session.add(stored)
        analysis = session.get(Analysis, analysis_id)
        assert analysis is not None
        analysis.status, analysis.completed_at = "completed", datetime.now(UTC)
        analysis.model_identity, analysis.trace = identity, trace
        session.commit()
        report_id = stored.id

    ledger.append(
        "report.drafted",
        ACTOR,
        {
            "analysis_id": analysis_id,
            "report_id": report_id,
            "severity": stored.severity,
            "statements": len(report.findings) + len(report.impression),
            "rejected_statements": len(verified.rejected),
            "untrained_model": report.untrained_model,
            "model_weights_sha256": identity["weights_sha256"],
        },
        patient_ref=patient_ref,
        study_uid=study_uid,
    )
    ledger.append(
        "analysis.completed",
        ACTOR,
        {"analysis_id": analysis_id, "report_id": report_id, "elapsed_s": trace["elapsed_s"]},
        patient_ref=patient_ref,
        study_uid=study_uid,
    )
    if runtime.enqueue_writeback is not None and patient_ref is not None:
        runtime.enqueue_writeback(report_id)
    if runtime.enqueue_sr_export is not None and runtime.sr_destination is not None:
        runtime.enqueue_sr_export(report_id)
    return report_id


def _draft_within_memory(
    runtime: WorkerRuntime,
    images: list[ModelImage],
    context: PatientContext,
    make_registry: Callable[[], ToolRegistry],
    record_step: Callable[[TraceStep], None],
) -> tuple[DraftResult, list[ModelImage]]:
    """A study that does not fit on the GPU is retried with half the images, down to one, not crashed."""
    import torch

    from model.agent import run_agent
    from model.batching import StudyTooLarge

    while True:
        try:
            result = run_agent(runtime.vlm(), images, context, make_registry(), step_sink=record_step)
            return result, images
        except (StudyTooLarge, torch.OutOfMemoryError):
            if len(images) <= 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            images = images[: len(images) // 2]
            record_step(TraceStep(kind="memory_retry", detail={"images": len(images)}))


def report_body(verified: VerifiedReport) -> dict[str, Any]:
    """The stored draft: supported statements marked verified, rejected ones listed apart with the reason."""
    body = verified.report.model_dump(mode="json")
    for section in ("findings", "impression"):
        for statement in body[section]:
            statement["verification"] = {"verdict": "verified"}
    body["rejected"] = [
        {
            "section": verdict.section,
            "statement": verdict.statement.model_dump(mode="json"),
            "verification": {
                "verdict": "rejected",
                "reason": verdict.reason.value if verdict.reason else None,
                "detail": verdict.detail,
            },
        }
        for verdict in verified.rejected
    ]
    return body


def mark_failed(runtime: WorkerRuntime, analysis_id: str, reason: str) -> None:
    with runtime.session_factory() as session:
        analysis = session.get(Analysis, analysis_id)
        if analysis is not None and analysis.status != "completed":
            analysis.status, analysis.error = "failed", reason[:2000]
            session.commit()
    runtime.ledger.append("analysis.failed", ACTOR, {"analysis_id": analysis_id, "reason": reason[:200]})

"""Send a stored draft report back to the PACS as a DICOM SR: the body of the `io` SR-export task.

Why a function of (runtime, report_id): the task that calls it takes ids and re-fetches (a message may be
delivered twice), and everything it needs is already in the worker's runtime. The SR is built once per
(analysis, destination) and kept in the spool with a pending `sr_exports` row, so a redelivered task sends
the same object with the same SOP Instance UID instead of a second SR. Retries and the permanent-failure
state live in `SrExporter`; this function attempts at most once per call and tells the caller when to call
again, so the task can `retry(countdown=...)` without ever sleeping inside a worker thread.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from integrations.dicom.audit_port import AuditLedger
from integrations.dicom.config import SrDestination
from integrations.dicom.spool import Spool
from integrations.dicom.sr_export import build_draft_sr, load_evidence
from integrations.dicom.sr_sender import KIND_FAILED, SrExporter, Verdict
from integrations.dicom.study_files import study_instance_files
from integrations.store.models import Report, SrExport
from model.report import DraftReport

LOG = logging.getLogger(__name__)
ACTOR = "dicom-sr-export"


class SrExportRuntime(Protocol):
    """The slice of the worker runtime SR export reads; `integrations.worker_runtime.WorkerRuntime` fits
    once it carries `sr_destination` and `dicom_ae_title`."""

    @property
    def session_factory(self) -> Callable[[], Session]: ...

    @property
    def ledger(self) -> AuditLedger: ...

    def spool(self) -> Spool: ...

    @property
    def sr_destination(self) -> SrDestination | None: ...

    @property
    def dicom_ae_title(self) -> str: ...


class DispatchState(enum.Enum):
    # No destination configured: SR export is off, nothing to do.
    DISABLED = "disabled"
    # No such report (deleted database, wrong id): nothing to send, nothing to retry.
    NO_REPORT = "no_report"
    SENT = "sent"
    # Pending: call again after `retry_in_s`.
    PENDING = "pending"
    # Permanent: attempts exhausted, refused for good, or the SR could not be built. Audited.
    FAILED = "failed"


@dataclass(frozen=True)
class SrDispatch:
    state: DispatchState
    export_id: str | None = None
    # DIMSE status of the last attempt, when one was made in this call.
    status: int | None = None
    attempts: int = 0
    retry_in_s: float | None = None


def sr_uid_for(report_id: str) -> str:
    """The SR's SOP Instance UID, derived from the report id: one report is one SR object everywhere."""
    return str(generate_uid(entropy_srcs=["veritrace-draft-sr", report_id]))


def export_draft_sr(runtime: SrExportRuntime, report_id: str, *, now: datetime | None = None) -> SrDispatch:
    """Build (once), queue (once) and attempt (if due) the draft SR of one stored report.

    Idempotent per (report, destination): call it again whenever the result says PENDING, after
    `retry_in_s`; SENT and FAILED are final and further calls change nothing.
    """
    destination = runtime.sr_destination
    if destination is None:
        return SrDispatch(DispatchState.DISABLED)
    now = now or datetime.now(UTC)
    spool = runtime.spool()
    exporter = SrExporter(
        runtime.session_factory, spool, runtime.ledger, destination, calling_ae=runtime.dicom_ae_title
    )
    with runtime.session_factory() as session:
        report = session.get(Report, report_id)
        if report is None:
            LOG.warning("SR export: report %s not found; nothing to send", report_id)
            return SrDispatch(DispatchState.NO_REPORT)
        analysis_id, study_uid = report.analysis_id, report.study_uid
        export_id = session.execute(
            select(SrExport.id).where(
                SrExport.analysis_id == analysis_id, SrExport.destination == destination.label
            )
        ).scalar_one_or_none()
        if export_id is None:
            draft = DraftReport.model_validate(report.body)
            paths = study_instance_files(session, analysis_id, spool)
    if export_id is None:
        try:
            sr = build_draft_sr(draft, load_evidence(paths), sop_instance_uid=sr_uid_for(report_id))
        except (ValueError, TypeError, OSError) as exc:
            # A draft that cannot become a valid SR will not become one on retry: fail once, audited.
            reason = f"SR could not be built ({type(exc).__name__})"
            LOG.error("SR export of report %s: %s", report_id, reason)
            runtime.ledger.append(
                KIND_FAILED,
                ACTOR,
                {"analysis_id": analysis_id, "destination": destination.label, "reason": reason},
                study_uid=study_uid,
            )
            return SrDispatch(DispatchState.FAILED)
        export_id = exporter.queue(analysis_id, sr, now)
    outcome = exporter.send_one(export_id, now)
    if outcome.verdict is Verdict.SENT:
        return SrDispatch(DispatchState.SENT, export_id, outcome.status, outcome.attempts)
    if outcome.verdict is Verdict.FAILED:
        return SrDispatch(DispatchState.FAILED, export_id, outcome.status, outcome.attempts)
    due = outcome.next_attempt_at or now
    return SrDispatch(
        DispatchState.PENDING,
        export_id,
        outcome.status,
        outcome.attempts,
        retry_in_s=max((due - now).total_seconds(), 0.0),
    )

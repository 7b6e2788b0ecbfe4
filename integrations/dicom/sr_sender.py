"""Send draft SRs back to the PACS by C-STORE, with retries, backoff and a permanent-failure state.

State lives in `sr_exports`, so retries survive restarts and several io workers can share the work.
A transient failure (PACS down, association rejected, out of resources, timeout) is retried with
exponential backoff until `max_attempts`; a refusal that will not change on retry (SOP class not
supported, data set error) fails at once. Either end is one audit entry, so nothing retries forever and
nothing fails silently.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom import AE
from sqlalchemy import select
from sqlalchemy.orm import Session

from integrations.dicom.audit_port import AuditLedger
from integrations.dicom.config import SrDestination
from integrations.dicom.spool import Spool
from integrations.store.models import Analysis, SrExport, Study
from model.dicom_source import DicomFile, read_dicom

LOG = logging.getLogger(__name__)
ACTOR = "dicom-sr-export"
KIND_SENT = "sr.exported"
KIND_FAILED = "sr.export_failed"
NO_STATUS = -1  # no C-STORE response at all: association refused, dropped or timed out


class Verdict(enum.Enum):
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"


def classify(status: int) -> Verdict:
    """PS3.4 Annex B.2.3 / PS3.7 Annex C: which C-STORE outcomes are worth another attempt."""
    if status == 0x0000 or 0xB000 <= status <= 0xBFFF:  # success, or stored with a warning
        return Verdict.SENT
    if status == NO_STATUS or 0xA700 <= status <= 0xA7FF or status in (0x0110, 0x0212, 0xC211, 0xC212):
        return Verdict.RETRY
    return Verdict.FAILED


def c_store_file(path: DicomFile, destination: SrDestination, calling_ae: str) -> int:
    """One association, one C-STORE; returns the status or NO_STATUS. Every step has a timeout."""
    dataset = read_dicom(path)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout_s
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        return NO_STATUS
    try:
        response = assoc.send_c_store(dataset)
        return int(response.Status) if "Status" in response else NO_STATUS
    finally:
        if assoc.is_established:
            assoc.release()


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything we write is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def backoff(destination: SrDestination, attempts_made: int) -> timedelta:
    """Delay after the `attempts_made`-th failure: base * 2**(n-1), capped."""
    seconds = destination.backoff_base_s * 2 ** max(attempts_made - 1, 0)
    return timedelta(seconds=min(seconds, destination.backoff_max_s))


@dataclass(frozen=True)
class SendOutcome:
    export_id: str
    verdict: Verdict
    status: int
    attempts: int
    # Set while the export stays pending: when the next attempt is due.
    next_attempt_at: datetime | None = None


class SrExporter:
    def __init__(
        self,
        session_factory: Callable[[], Session],
        spool: Spool,
        ledger: AuditLedger,
        destination: SrDestination,
        *,
        calling_ae: str = "VERITRACE",
        send: Callable[[DicomFile, SrDestination, str], int] = c_store_file,
    ) -> None:
        self._session_factory = session_factory
        self._spool = spool
        self._ledger = ledger
        self.destination = destination
        self._calling_ae = calling_ae
        self._send = send

    def queue(self, analysis_id: str, sr: Dataset, now: datetime | None = None) -> str:
        """Spool the SR and record a pending export, due at `now`; idempotent per (analysis, destination)."""
        with self._session_factory() as session, session.begin():
            existing = session.execute(
                select(SrExport.id).where(
                    SrExport.analysis_id == analysis_id, SrExport.destination == self.destination.label
                )
            ).scalar_one_or_none()
            if existing is not None:
                return existing
            buffer = BytesIO()
            sr.save_as(buffer, enforce_file_format=True)
            spooled = self._spool.write_stream([buffer.getvalue()])
            export = SrExport(
                analysis_id=analysis_id,
                destination=self.destination.label,
                sop_instance_uid=str(sr.SOPInstanceUID),
                spool_path=spooled.relative_path,
                state="pending",
                attempts=0,
                next_attempt_at=now or datetime.now(UTC),
            )
            session.add(export)
            session.flush()
            return export.id

    def send_due(self, now: datetime | None = None) -> list[SendOutcome]:
        """Attempt every pending export whose time has come; returns what happened to each."""
        now = now or datetime.now(UTC)
        with self._session_factory() as session:
            due = list(
                session.execute(
                    select(SrExport.id).where(
                        SrExport.state == "pending",
                        SrExport.destination == self.destination.label,
                        SrExport.next_attempt_at <= now,
                    )
                ).scalars()
            )
        return [self._attempt(export_id, now) for export_id in due]

    def send_one(self, export_id: str, now: datetime | None = None) -> SendOutcome:
        """Attempt one export if it is pending and due; otherwise report its state without sending.

        This is the entry point for a task that owns one export: a redelivered or retried task calls it
        again and never sends an export that is already sent, failed for good, or not yet due.
        """
        now = now or datetime.now(UTC)
        with self._session_factory() as session:
            export = session.get(SrExport, export_id)
            if export is None:
                raise LookupError(f"no SR export {export_id!r}")
            state, attempts, due = export.state, export.attempts, _aware(export.next_attempt_at)
        if state == "sent":
            return SendOutcome(export_id, Verdict.SENT, 0, attempts)
        if state == "failed":
            return SendOutcome(export_id, Verdict.FAILED, NO_STATUS, attempts)
        if due > now:
            return SendOutcome(export_id, Verdict.RETRY, NO_STATUS, attempts, next_attempt_at=due)
        return self._attempt(export_id, now)

    def _attempt(self, export_id: str, now: datetime) -> SendOutcome:
        with self._session_factory() as session:
            export = session.get(SrExport, export_id)
            assert export is not None
            path = self._spool.stored(export.spool_path)
        try:
            status = self._send(path, self.destination, self._calling_ae)
        except (OSError, RuntimeError, ValueError) as exc:
            LOG.warning("SR export to %s raised %s", self.destination.label, type(exc).__name__)
            status = NO_STATUS
        verdict = classify(status)
        with self._session_factory() as session, session.begin():
            export = session.get(SrExport, export_id, with_for_update=True)
            assert export is not None
            export.attempts += 1
            if verdict is Verdict.RETRY and export.attempts >= self.destination.max_attempts:
                verdict = Verdict.FAILED
            if verdict is Verdict.SENT:
                export.state, export.sent_at, export.last_error = "sent", now, None
            elif verdict is Verdict.FAILED:
                export.state, export.last_error = (
                    "failed",
                    f"status 0x{status & 0xFFFF:04X}" if status >= 0 else "no response",
                )
            else:
                export.next_attempt_at = now + backoff(self.destination, export.attempts)
                export.last_error = f"status 0x{status:04X}" if status >= 0 else "no response"
            attempts, analysis_id, sop_uid = export.attempts, export.analysis_id, export.sop_instance_uid
            next_attempt_at = export.next_attempt_at if verdict is Verdict.RETRY else None
            study = session.execute(
                select(Study.study_uid, Study.patient_id)
                .join(Analysis, Analysis.study_id == Study.id)
                .where(Analysis.id == analysis_id)
            ).first()
        if verdict is not Verdict.RETRY:
            self._ledger.append(
                KIND_SENT if verdict is Verdict.SENT else KIND_FAILED,
                ACTOR,
                {
                    "analysis_id": analysis_id,
                    "destination": self.destination.label,
                    "sop_instance_uid": sop_uid,
                    "attempts": attempts,
                    "status": status,
                },
                patient_ref=study.patient_id if study else None,
                study_uid=study.study_uid if study else None,
            )
        return SendOutcome(export_id, verdict, status, attempts, next_attempt_at=next_attempt_at)

    def run(self, stop_event: threading.Event, interval_s: float = 1.0) -> None:
        while not stop_event.is_set():
            try:
                self.send_due()
            except Exception:
                LOG.exception("SR export pass failed; retrying")
            stop_event.wait(interval_s)

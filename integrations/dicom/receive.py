"""One received file from temp path to spool and index, with the DIMSE status to answer.

Shared by the Storage SCP (one call per C-STORE) so the rules live in one place: watermark first (refuse
before touching the disk), parse second (never spool what we cannot index), then spool, index, commit,
and only then the receipt. Every failure maps to a PS3.4 status; the association always continues.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from integrations.dicom.header import InstanceHeader, UnreadableDataset, read_instance_header
from integrations.dicom.receipts import ReceiptBatcher
from integrations.dicom.spool import Spool, SpooledFile, WrittenFile
from integrations.dicom.status import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
)
from integrations.store.ingest import (
    IngestOutcome,
    InstanceFacts,
    RecordedInstance,
    StudyIds,
    record_instance,
)

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceiveResult:
    status: int
    outcome: IngestOutcome | None = None
    sha256: str | None = None
    # Set on failure; says what was wrong, never which patient or which values.
    reason: str | None = None


def facts_from(header: InstanceHeader, spooled: SpooledFile) -> InstanceFacts:
    return InstanceFacts(
        study_uid=header.study_uid,
        series_uid=header.series_uid,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        transfer_syntax_uid=header.transfer_syntax_uid,
        modality=header.modality,
        body_part=header.body_part,
        patient_id=header.patient_id,
        accession_number=header.accession_number,
        spool_path=spooled.relative_path,
        sha256=spooled.sha256,
        size_bytes=spooled.size_bytes,
    )


class InstanceReceiver:
    def __init__(self, spool: Spool, session_factory: Callable[[], Session], batcher: ReceiptBatcher) -> None:
        self.spool = spool
        with session_factory() as session:
            bind = session.get_bind()
        self._engine: Engine = bind if isinstance(bind, Engine) else bind.engine
        self._batcher = batcher
        self._study_ids = StudyIds()

    def receive(
        self,
        temp_path: Path,
        *,
        calling_ae: str,
        association_key: object,
        expected_sop_class: str | None = None,
        expected_sop_instance: str | None = None,
        written: WrittenFile | None = None,
    ) -> ReceiveResult:
        """Spool and index one received file; `written` carries the digest computed while receiving."""
        if not self.spool.has_room():
            LOG.warning("spool below free-space watermark; refusing an instance from %s", calling_ae)
            return ReceiveResult(STATUS_OUT_OF_RESOURCES, reason="spool below free-space watermark")
        try:
            header = read_instance_header(temp_path)
        except UnreadableDataset as exc:
            LOG.warning("unreadable dataset from %s: %s", calling_ae, exc)
            return ReceiveResult(STATUS_CANNOT_UNDERSTAND, reason=str(exc))
        if expected_sop_class is not None and header.sop_class_uid != expected_sop_class:
            return ReceiveResult(STATUS_DATASET_MISMATCH, reason="SOP Class UID differs from the request")
        if expected_sop_instance is not None and header.sop_instance_uid != expected_sop_instance:
            return ReceiveResult(STATUS_DATASET_MISMATCH, reason="SOP Instance UID differs from the request")
        try:
            spooled = self.spool.adopt(temp_path, written)
        except OSError as exc:
            LOG.error("spool write failed (%s)", type(exc).__name__)
            return ReceiveResult(STATUS_OUT_OF_RESOURCES, reason="spool write failed")
        try:
            recorded = self._index(header, spooled, calling_ae)
        except SQLAlchemyError as exc:
            # The file stays in the spool (content-addressed; a resend finds it and indexes it then).
            LOG.error("index write failed (%s)", type(exc).__name__)
            return ReceiveResult(STATUS_PROCESSING_FAILURE, reason="index write failed")
        # Duplicates are receipted too: after a crash, the receipts of instances acknowledged before it
        # were still pending in memory, and the PACS's resend (all duplicates by then) is what puts them
        # in the ledger. A receipt records an event, so a repeat of known bytes is one more event.
        self._batcher.add(
            association_key,
            calling_ae=calling_ae,
            study_uid=header.study_uid,
            patient_ref=header.patient_id,
            receipt={
                "sop_instance_uid": header.sop_instance_uid,
                "sha256": spooled.sha256,
                "size_bytes": spooled.size_bytes,
                "outcome": recorded.outcome.value,
                "conflict": recorded.outcome is IngestOutcome.CONFLICT,
            },
        )
        return ReceiveResult(STATUS_SUCCESS, outcome=recorded.outcome, sha256=spooled.sha256)

    def _index(self, header: InstanceHeader, spooled: SpooledFile, calling_ae: str) -> RecordedInstance:
        # A bare Connection, not a Session: on this path the ORM session's bookkeeping cost more than the
        # statements themselves.
        with self._engine.begin() as connection:
            recorded = record_instance(
                connection,
                facts_from(header, spooled),
                calling_ae=calling_ae,
                now=datetime.now(UTC),
                study_ids=self._study_ids,
            )
        self._study_ids.put(header.study_uid, recorded.study_id)  # committed: safe to remember
        return recorded

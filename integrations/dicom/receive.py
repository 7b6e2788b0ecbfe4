"""One received file from temp path to spool and intake journal, with the DIMSE status to answer.

Shared by the Storage SCP (one call per C-STORE) so the rules live in one place: watermark first (refuse
before touching the disk), parse second (never spool what we cannot index), then a slot with the indexer
(refused while the index cannot be written or the queue is full: 0x0110 / 0xA700, before spooling), then
spool, then one line in the intake journal, and Success. The index row and the ledger receipt follow on
the indexer thread (`batched_indexer`); what a crash leaves between the two is in the journal, replayed
at the next start (`intake_replay`). Every failure maps to a PS3.4 status; the association always
continues.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from integrations.dicom.batched_indexer import BatchedIndexer, PendingInstance
from integrations.dicom.header import InstanceHeader, UnreadableDataset, read_instance_header
from integrations.dicom.spool import Spool, SpooledFile, WrittenFile
from integrations.dicom.status import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
)
from integrations.store.ingest import InstanceFacts

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceiveResult:
    status: int
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
    def __init__(self, spool: Spool, indexer: BatchedIndexer) -> None:
        self.spool = spool
        self.indexer = indexer

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
        """Spool and journal one received file; `written` carries the digest computed while receiving."""
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
        refusal = self.indexer.reserve()
        if refusal is not None:
            reason = "index writes failing" if refusal == STATUS_PROCESSING_FAILURE else "intake queue full"
            return ReceiveResult(refusal, reason=reason)
        try:
            try:
                spooled = self.spool.adopt(temp_path, written)
            except OSError as exc:
                LOG.error("spool write failed (%s)", type(exc).__name__)
                self.indexer.cancel()
                return ReceiveResult(STATUS_OUT_OF_RESOURCES, reason="spool write failed")
            try:
                entry = self.indexer.journal.append(
                    spooled.relative_path, spooled.sha256, spooled.size_bytes, calling_ae, datetime.now(UTC)
                )
            except OSError as exc:
                # Not acknowledged; the file stays in the spool (content-addressed: a resend finds it).
                LOG.error("intake journal write failed (%s)", type(exc).__name__)
                self.indexer.cancel()
                return ReceiveResult(STATUS_OUT_OF_RESOURCES, reason="intake journal write failed")
        except BaseException:
            self.indexer.cancel()
            raise
        self.indexer.submit(PendingInstance(facts_from(header, spooled), calling_ae, association_key, entry))
        return ReceiveResult(STATUS_SUCCESS, sha256=spooled.sha256)

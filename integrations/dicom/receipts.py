"""Batch "dicom.received" ledger entries per association and study.

Why batch: a CT study is hundreds of instances pushed in one association; one Merkle leaf per instance
would put the ledger's sequencer lock on the receive path. One entry per (association, study) still names
every SOP Instance UID with its digest and size, and is flushed when the association ends (release,
abort or dropped connection) or when it reaches `batch_size` instances. The payload never holds patient
names or other demographics; the patient reference goes in the ledger's own `patient_ref` field.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from integrations.dicom.audit_port import AuditLedger

LOG = logging.getLogger(__name__)
KIND_RECEIVED = "dicom.received"


@dataclass
class _Batch:
    calling_ae: str
    study_uid: str
    patient_ref: str | None
    source: str
    instances: list[dict[str, Any]] = field(default_factory=list)


class ReceiptBatcher:
    """Thread-safe: each association thread adds; the association's end flushes its own batches."""

    def __init__(self, ledger: AuditLedger, actor: str, batch_size: int = 256) -> None:
        self._ledger = ledger
        self._actor = actor
        self._batch_size = batch_size
        self._lock = threading.Lock()
        self._batches: dict[tuple[object, str], _Batch] = {}

    def add(
        self,
        association_key: object,
        *,
        calling_ae: str,
        study_uid: str,
        patient_ref: str | None,
        receipt: dict[str, Any],
        source: str = "dimse",
    ) -> None:
        full: _Batch | None = None
        with self._lock:
            key = (association_key, study_uid)
            batch = self._batches.get(key)
            if batch is None:
                batch = _Batch(calling_ae, study_uid, patient_ref, source)
                self._batches[key] = batch
            batch.instances.append(receipt)
            if len(batch.instances) >= self._batch_size:
                full = self._batches.pop(key)
        if full is not None:
            self._append(full)

    def flush(self, association_key: object) -> int:
        """Write every pending batch of one association; returns how many ledger entries were appended."""
        with self._lock:
            keys = [key for key in self._batches if key[0] is association_key]
            batches = [self._batches.pop(key) for key in keys]
        for batch in batches:
            self._append(batch)
        return len(batches)

    def flush_all(self) -> int:
        with self._lock:
            batches = list(self._batches.values())
            self._batches.clear()
        for batch in batches:
            self._append(batch)
        return len(batches)

    def _append(self, batch: _Batch) -> None:
        payload = {
            "calling_ae": batch.calling_ae,
            "source": batch.source,
            "instance_count": len(batch.instances),
            "instances": batch.instances,
        }
        try:
            try:
                self._ledger.append(
                    KIND_RECEIVED,
                    self._actor,
                    payload,
                    patient_ref=batch.patient_ref,
                    study_uid=batch.study_uid,
                )
            except ValueError:
                # The ledger only indexes well-formed UIDs; a sender's malformed Study Instance UID must not
                # cost the receipt, so it is recorded without the study index and says so.
                payload["study_uid_malformed"] = True
                self._ledger.append(KIND_RECEIVED, self._actor, payload, patient_ref=batch.patient_ref)
        except Exception:
            # The instances are already durable in the spool and the index; losing the receipt entry must
            # not turn into losing the images. Logged without identifiers for the operator to reconcile.
            LOG.exception("ledger append failed for a batch of %d received instances", len(batch.instances))

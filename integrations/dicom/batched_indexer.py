"""One indexer thread per dicom process: commits acknowledged instances to the index in batches.

Why: one transaction per instance on the receiving thread was a quarter of its time (bench/RESULTS.md,
"DICOM ingest"). An instance is now acknowledged once its file is in the spool and its line is in the
intake journal; this thread commits the rows (`record_instance`, one transaction per batch of up to
`batch_max` rows gathered for at most `linger_s`), then hands the receipts to the `ReceiptBatcher` (the
outcome, new / duplicate / conflict, comes from the commit), then marks the journal lines done.

Admission (`reserve` before the file is spooled) is where back-pressure shows:
- while commits fail for want of a database, new instances are refused with 0x0110 (processing failure,
  the status the SCP answered before for a failed index write; the PACS retries it later), and the
  thread retries its batch with exponential backoff until the database is back;
- when `capacity` instances are reserved, queued or being committed, new ones are refused with 0xA700
  (out of resources); nothing blocks and nothing acknowledged is ever dropped.

A row the database refuses for its values (not for being unreachable) is isolated by committing the batch
one row at a time; the refused one is logged, left not-done in the journal (the next start retries it)
and does not hold up the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from integrations.dicom.intake_journal import EntryHandle, IntakeJournal
from integrations.dicom.receipts import ReceiptBatcher
from integrations.dicom.status import STATUS_OUT_OF_RESOURCES, STATUS_PROCESSING_FAILURE
from integrations.store.ingest import (
    IngestOutcome,
    InstanceFacts,
    RecordedInstance,
    StudyIds,
    record_instance,
)

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingInstance:
    """An acknowledged (or replayed) instance waiting for its index row. `facts` hold PHI: never log."""

    facts: InstanceFacts
    calling_ae: str
    association_key: object
    entry: EntryHandle | None


def is_outage(exc: SQLAlchemyError) -> bool:
    """The database could not be reached or dropped the connection (as opposed to refusing a row)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class _BatchStudyIds(StudyIds):
    """Study ids made earlier in the same (uncommitted) transaction first, then the committed cache."""

    def __init__(self, committed: StudyIds) -> None:
        super().__init__()
        self._committed = committed

    def get(self, study_uid: str) -> int | None:
        found = super().get(study_uid)
        return found if found is not None else self._committed.get(study_uid)


class IndexWriter:
    """Commits a batch of instances in one transaction; shared by the indexer thread and start-up replay."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._study_ids = StudyIds()

    def commit(self, items: Sequence[PendingInstance]) -> list[RecordedInstance]:
        batch_ids = _BatchStudyIds(self._study_ids)
        now = datetime.now(UTC)  # commit time: the stability tracker's quiet period starts here
        recorded: list[RecordedInstance] = []
        with self._engine.begin() as connection:
            for item in items:
                row = record_instance(
                    connection, item.facts, calling_ae=item.calling_ae, now=now, study_ids=batch_ids
                )
                batch_ids.put(item.facts.study_uid, row.study_id)
                recorded.append(row)
        for item, row in zip(items, recorded, strict=True):
            self._study_ids.put(item.facts.study_uid, row.study_id)  # committed: safe to remember
        return recorded


def hand_receipts(
    batcher: ReceiptBatcher, items: Sequence[PendingInstance], recorded: Sequence[RecordedInstance]
) -> None:
    for item, row in zip(items, recorded, strict=True):
        # Duplicates are receipted too: a receipt records an event (after a crash, the PACS's resend of
        # instances whose receipts were still in memory is what puts them in the ledger).
        batcher.add(
            item.association_key,
            calling_ae=item.calling_ae,
            study_uid=item.facts.study_uid,
            patient_ref=item.facts.patient_id,
            receipt={
                "sop_instance_uid": item.facts.sop_instance_uid,
                "sha256": item.facts.sha256,
                "size_bytes": item.facts.size_bytes,
                "outcome": row.outcome.value,
                "conflict": row.outcome is IngestOutcome.CONFLICT,
            },
        )


class BatchedIndexer:
    """`start` the thread, `reserve` + `submit` from association threads, `stop` drains at shutdown."""

    def __init__(
        self,
        writer: IndexWriter,
        batcher: ReceiptBatcher,
        journal: IntakeJournal,
        *,
        capacity: int = 1000,
        batch_max: int = 200,
        linger_s: float = 0.005,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
    ) -> None:
        if capacity < 1 or batch_max < 1:
            raise ValueError("capacity and batch_max must be at least 1")
        self.journal = journal
        self._writer = writer
        self._batcher = batcher
        self._capacity = capacity
        self._batch_max = batch_max
        self._linger_s = linger_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._cond = threading.Condition()
        self._queue: deque[PendingInstance] = deque()
        self._load = 0  # reserved + queued + being committed
        self._healthy = True
        self._stopping = False
        self._abandon = threading.Event()
        self._per_association: Counter[object] = Counter()
        self._ended: set[object] = set()
        self._held_studies: Counter[str] = Counter()
        self._in_flight = 0
        self._thread: threading.Thread | None = None

    # --- association side ----------------------------------------------------------------------------

    def refusal(self) -> int | None:
        """The status a new instance would be refused with now, or None (a hint; `reserve` decides)."""
        with self._cond:
            return self._refusal_locked()

    def _refusal_locked(self) -> int | None:
        if self._stopping or not self._healthy:
            return STATUS_PROCESSING_FAILURE
        if self._load >= self._capacity:
            return STATUS_OUT_OF_RESOURCES
        return None

    def reserve(self) -> int | None:
        """Take a slot before spooling; returns the refusal status instead when there is none."""
        with self._cond:
            refusal = self._refusal_locked()
            if refusal is None:
                self._load += 1
            return refusal

    def cancel(self) -> None:
        """Give back a reserved slot whose instance was not acknowledged after all."""
        with self._cond:
            self._load -= 1
            self._cond.notify_all()

    def submit(self, item: PendingInstance) -> None:
        """Queue a journaled instance on its reserved slot (never refuses, never blocks)."""
        with self._cond:
            self._queue.append(item)
            self._per_association[item.association_key] += 1
            self._held_studies[item.facts.study_uid] += 1
            # Wake the thread only to start a batch or to end one early: while it lingers it wakes on
            # its own, and a wake-up per instance cost a context switch and a GIL handover each.
            if len(self._queue) == 1 or len(self._queue) >= self._batch_max:
                self._cond.notify_all()

    def association_ended(self, association_key: object) -> None:
        """Write the association's receipts now, or after its last instance is committed."""
        with self._cond:
            if self._per_association[association_key] > 0:
                self._ended.add(association_key)
                return
            del self._per_association[association_key]
        self._batcher.flush(association_key)

    def held_studies(self) -> frozenset[str]:
        """Study UIDs with acknowledged instances not committed yet (the stability tracker waits)."""
        with self._cond:
            return frozenset(self._held_studies)

    @property
    def healthy(self) -> bool:
        with self._cond:
            return self._healthy

    def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is queued or being committed (tests, graceful shutdown)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the indexer is already started")
        self._thread = threading.Thread(target=self._run, name="dicom-indexer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Refuse new instances, commit what is queued, stop the thread and close the journal.

        Returns False when the queue could not be drained in time (database down): those entries stay
        in the journal, whose lock is dropped here, and the next start (of any dicom process on this
        spool) replays them."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        drained = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                drained = False
                self._abandon.set()
                self._thread.join(5)
        self._batcher.flush_all()
        self.journal.close()
        if not drained:
            LOG.error("stopped with acknowledged instances not indexed; the next start replays them")
        return drained

    # --- the thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            self._commit_with_retry(batch)
            if self._abandon.is_set():
                return

    def _take(self) -> list[PendingInstance]:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return []
                self._cond.wait()
            deadline = time.monotonic() + self._linger_s
            while len(self._queue) < self._batch_max and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            count = min(len(self._queue), self._batch_max)
            batch = [self._queue.popleft() for _ in range(count)]
            self._in_flight = count
            return batch

    def _commit_with_retry(self, batch: list[PendingInstance]) -> None:
        delay = self._backoff_initial_s
        remaining = batch
        while remaining:
            try:
                recorded = self._writer.commit(remaining)
            except Exception as exc:  # anything else than an outage is isolated to its row below
                if isinstance(exc, SQLAlchemyError) and is_outage(exc):
                    self._set_healthy(False, exc)
                    if self._abandon.wait(delay):
                        return
                    delay = min(delay * 2, self._backoff_max_s)
                    continue
                remaining = self._commit_one_by_one(remaining)
                continue
            self._set_healthy(True, None)
            self._finish(remaining, recorded)
            return

    def _commit_one_by_one(self, batch: list[PendingInstance]) -> list[PendingInstance]:
        """Isolate the rows the database refuses; returns the rest of the batch after an outage."""
        for position, item in enumerate(batch):
            try:
                recorded = self._writer.commit([item])
            except Exception as exc:
                if isinstance(exc, SQLAlchemyError) and is_outage(exc):
                    return batch[position:]
                self._set_healthy(True, None)  # the database answered: it refused this row only
                LOG.error(
                    "the index refused an acknowledged instance (%s); it stays in the intake journal",
                    type(exc).__name__,
                )
                self._release([item])
                continue
            self._set_healthy(True, None)
            self._finish([item], recorded)
        return []

    def _set_healthy(self, healthy: bool, exc: Exception | None) -> None:
        with self._cond:
            changed = healthy != self._healthy
            self._healthy = healthy
        if changed and exc is not None:
            LOG.error(
                "index writes failing (%s); refusing new instances until they succeed", type(exc).__name__
            )
        elif changed:
            LOG.warning("index writes succeed again; accepting instances")

    def _finish(self, items: Sequence[PendingInstance], recorded: Sequence[RecordedInstance]) -> None:
        hand_receipts(self._batcher, items, recorded)
        self.journal.mark_done([item.entry for item in items if item.entry is not None])
        self._release(items)

    def _release(self, items: Sequence[PendingInstance]) -> None:
        to_flush: list[object] = []
        with self._cond:
            for item in items:
                key = item.association_key
                self._per_association[key] -= 1
                if self._per_association[key] <= 0:
                    del self._per_association[key]
                    if key in self._ended:
                        self._ended.discard(key)
                        to_flush.append(key)
                self._held_studies[item.facts.study_uid] -= 1
                if self._held_studies[item.facts.study_uid] <= 0:
                    del self._held_studies[item.facts.study_uid]
            self._load -= len(items)
            self._in_flight -= len(items)
            self._cond.notify_all()
        for key in to_flush:
            self._batcher.flush(key)

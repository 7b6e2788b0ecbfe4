"""Start-up replay: index what dead dicom processes acknowledged but never committed.

Runs before the SCP accepts associations. Every journal file under `<spool>/journal/` whose lock is free
is claimed (its writer died, by kill -9 or a crash, or stopped with the database down); its lines not
marked done are indexed from their spooled files, with the same `record_instance` as the live path, so a
line whose row was in fact committed comes back as a duplicate and no second row is made. The file is
deleted once all its lines are committed. While the database is unreachable, replay retries with backoff
and the SCP does not listen: acknowledging more while older acknowledgements are unindexed would only
grow the debt.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from integrations.dicom.batched_indexer import IndexWriter, PendingInstance, hand_receipts, is_outage
from integrations.dicom.header import UnreadableDataset, read_instance_header
from integrations.dicom.instance_header import InstanceHeader
from integrations.dicom.intake_journal import JOURNAL_DIR, JournalEntry, OrphanedJournal, claim_orphans
from integrations.dicom.receipts import ReceiptBatcher
from integrations.dicom.receive import facts_from
from integrations.dicom.spool import Spool, SpooledFile

LOG = logging.getLogger(__name__)


def replay_orphaned_journals(
    spool: Spool,
    writer: IndexWriter,
    batcher: ReceiptBatcher,
    *,
    batch_max: int = 200,
    backoff_max_s: float = 5.0,
    stop: threading.Event | None = None,
) -> int:
    """Index every orphaned journal's pending lines; returns how many lines were replayed."""
    replayed = 0
    for orphan in claim_orphans(spool.root / JOURNAL_DIR):
        complete = False
        try:
            replayed_here, complete = _replay_one(
                spool, writer, batcher, orphan, batch_max, backoff_max_s, stop
            )
            replayed += replayed_here
        finally:
            orphan.release(delete=complete)
    return replayed


def _replay_one(
    spool: Spool,
    writer: IndexWriter,
    batcher: ReceiptBatcher,
    orphan: OrphanedJournal,
    batch_max: int,
    backoff_max_s: float,
    stop: threading.Event | None,
) -> tuple[int, bool]:
    key = object()
    entries = orphan.pending()
    pairs = [(entry, item) for entry in entries if (item := _pending_for(spool, entry, key)) is not None]
    complete = len(pairs) == len(entries)
    replayed = 0
    for start in range(0, len(pairs), batch_max):
        chunk = pairs[start : start + batch_max]
        committed = _commit_chunk(writer, batcher, [item for _, item in chunk], backoff_max_s, stop)
        # Marked in the orphan too: should a line stay behind, the next start replays only that one.
        orphan.mark_done([chunk[position][0].seq for position in committed])
        replayed += len(committed)
        complete = complete and len(committed) == len(chunk)
    batcher.flush(key)
    if entries:
        LOG.info("replayed %d acknowledged instances from intake journal %s", replayed, orphan.path.name)
    return replayed, complete


def _commit_chunk(
    writer: IndexWriter,
    batcher: ReceiptBatcher,
    chunk: list[PendingInstance],
    backoff_max_s: float,
    stop: threading.Event | None,
) -> list[int]:
    """Commit a chunk, waiting out outages; returns the positions committed (a row the database
    refuses for its values is isolated by committing one row at a time, and stays journaled)."""
    if _commit_waiting(writer, batcher, chunk, backoff_max_s, stop):
        return list(range(len(chunk)))
    if len(chunk) == 1:
        return []
    return [
        position
        for position, item in enumerate(chunk)
        if _commit_waiting(writer, batcher, [item], backoff_max_s, stop)
    ]


def _commit_waiting(
    writer: IndexWriter,
    batcher: ReceiptBatcher,
    items: list[PendingInstance],
    backoff_max_s: float,
    stop: threading.Event | None,
) -> bool:
    wait: Callable[[float], bool] = stop.wait if stop is not None else threading.Event().wait
    delay = 0.1
    while True:
        try:
            recorded = writer.commit(items)
        except SQLAlchemyError as exc:
            if not is_outage(exc):
                LOG.error("the index refused a journaled instance (%s)", type(exc).__name__)
                return False
            LOG.error("replay cannot reach the index (%s); retrying", type(exc).__name__)
            if wait(delay):
                raise
            delay = min(delay * 2, backoff_max_s)
            continue
        hand_receipts(batcher, items, recorded)
        return True


def _pending_for(spool: Spool, entry: JournalEntry, key: object) -> PendingInstance | None:
    spooled = SpooledFile(entry.spool_path, entry.sha256, entry.size_bytes, already_present=True)
    try:
        header = _read_header(spool, entry.spool_path)
    except (OSError, ValueError, UnreadableDataset) as exc:
        LOG.error("a journaled spool file cannot be read for replay (%s); skipped", type(exc).__name__)
        return None
    return PendingInstance(facts_from(header, spooled), entry.calling_ae, key, entry=None)


def _read_header(spool: Spool, relative_path: str) -> InstanceHeader:
    if not spool.is_encrypted(relative_path):
        return read_instance_header(spool.absolute(relative_path))
    # The header reader maps a plaintext file: unseal into tmp/ (same 0700 directory as incoming data).
    plaintext = spool.scratch_path(".replay")
    try:
        with spool.open_plaintext(relative_path) as source, plaintext.open("wb") as out:
            shutil.copyfileobj(source, out)
        return read_instance_header(Path(plaintext))
    finally:
        plaintext.unlink(missing_ok=True)

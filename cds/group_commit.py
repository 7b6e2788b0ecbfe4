"""Group commit for the hook path: one writer thread turns the writes of many concurrent CDS calls into
one database transaction (``jti`` claims and card rows) and one audit-ledger append per cycle.

Why: every hook call writes three things (its token's ``jti``, its cards, its audit entry). Written
call by call, each was a transaction of its own, so 50 concurrent calls queued for pooled connections,
for the ledger's sequencer lock and for one round trip after another; the waiting, not the work, set
the latency. Here a call hands its writes to the writer and awaits them; while one batch commits, the
next one gathers, so a busy server writes big batches and an idle one writes at once (no timer).

Nothing is acknowledged that could be lost: a call's future resolves only after the transaction holding
its rows (and, for cards and audit entries, the ledger append after it) has committed. Commits use the
hook path's flush policy (atomic and ordered, flushed within the WAL writer's
cycle).

Replay across replicas is decided by the database: a claim is an upsert on ``cds_seen_jti``'s primary
key that inserts a new key or revives an expired one and returns the keys it wrote; a key not returned
is held, unexpired, by an earlier token seen by this or any other replica. Two claims of one key in one
batch: the first wins. A call submitted whole (``commit_call``) has its cards stored only if its claim
holds, in the same transaction; a replay gets its refusal entry appended instead. A batch whose
transaction fails is retried one call at a time, so a bad call fails alone and the others commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from audit import EntryDraft, Ledger
from cds.hook_rows import CardRow, HookRowWriter, hook_row_writer

log = logging.getLogger(__name__)

MAX_BATCH = 512
"""Calls per cycle at most; more wait for the next cycle (keeps one statement's size bounded)."""


@dataclass
class _Work:
    claim: tuple[str, datetime] | None = None
    cards: Sequence[CardRow] = ()
    audit: EntryDraft | None = None
    """Appended when the claim holds (or there is none)."""
    audit_if_replay: EntryDraft | None = None
    """Appended instead when the claim turns out to be a replay (its cards are then not stored)."""
    done: concurrent.futures.Future[bool] = field(default_factory=concurrent.futures.Future)


_STOP = _Work()
"""Queued by ``close``: the writer commits what came before it and leaves."""


class GroupCommitWriter:
    """Batches hook-path writes; safe to share between event loops and threads.

    The writer thread starts on the first submission and exits after ``idle_exit_s`` without work, so
    an app that is dropped without shutdown (tests, reloads) leaves no thread behind.
    """

    def __init__(
        self,
        engine: Engine,
        ledger: Ledger | None,
        *,
        purge_every_s: float = 60.0,
        idle_exit_s: float = 5.0,
        max_batch: int = MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._engine = engine
        self._ledger = ledger
        self.purge_every_s = purge_every_s
        self.idle_exit_s = idle_exit_s
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._rows: HookRowWriter | None = None
        self.batches = 0
        """Cycles committed so far (for tests and the benchmark: calls / batches = batch size)."""

    @classmethod
    def for_sessions(cls, session_factory: sessionmaker[Session], ledger: Ledger | None) -> GroupCommitWriter:
        bind = session_factory.kw.get("bind")
        if not isinstance(bind, Engine):
            raise TypeError(f"session_factory must be bound to an Engine, found {type(bind).__name__}")
        return cls(bind, ledger)

    async def claim_jti(self, key: str, expires_at: datetime) -> bool:
        """Record a token id until ``expires_at``; False when it is held, unexpired, by an earlier token."""
        return await self._submit(_Work(claim=(key, expires_at)))

    async def record(self, *, cards: Sequence[CardRow] = (), audit: EntryDraft | None = None) -> None:
        """Store the call's cards and append its audit entry; returns once both have committed."""
        await self.commit_call(claim=None, cards=cards, audit=audit)

    async def commit_call(
        self,
        *,
        claim: tuple[str, datetime] | None,
        cards: Sequence[CardRow] = (),
        audit: EntryDraft | None = None,
        audit_if_replay: EntryDraft | None = None,
    ) -> bool:
        """A whole call in one submission: its token's claim, its cards and its audit entry.

        Returns False when the claim was a replay: the cards are then not stored and
        ``audit_if_replay`` is appended in place of ``audit``. Returns once everything has committed.
        """
        if self._ledger is None and (audit is not None or audit_if_replay is not None):
            raise ValueError("this writer has no ledger to append audit entries to")
        work = _Work(claim=claim, cards=tuple(cards), audit=audit, audit_if_replay=audit_if_replay)
        return await self._submit(work)

    async def _submit(self, work: _Work) -> bool:
        self._queue.put(work)
        self._ensure_running()
        # Shielded: a caller that goes away (client disconnect) must not unqueue a write half-way.
        return await asyncio.shield(asyncio.wrap_future(work.done))

    def _ensure_running(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cds-group-commit", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Commit what is queued, then stop the thread and close the writer's connection.

        For an orderly shutdown (app lifespan); a writer that is never closed still lets go of its
        thread and connection after ``idle_exit_s`` without work. Submitting later starts it again.
        """
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            self._queue.put(_STOP)
        thread.join()

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.idle_exit_s)
            except queue.Empty:
                with self._lock:  # a submitter puts, then checks under this lock: nothing is stranded
                    if self._queue.empty():
                        self._stop()
                        return
                continue
            batch: list[_Work] = []
            item: _Work | None = first
            while item is not None:
                if item is _STOP:
                    if batch:
                        self._commit(batch)
                        batch = []
                    with self._lock:  # work queued after the stop keeps the thread (see _ensure_running)
                        if self._queue.empty():
                            self._stop()
                            return
                    break
                batch.append(item)
                if len(batch) >= self.max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if batch:
                self._commit(batch)

    def _stop(self) -> None:
        """Called by the writer thread, under the lock, as it leaves."""
        self._thread = None
        rows, self._rows = self._rows, None
        if rows is not None:
            try:
                rows.close()
            except Exception as exc:  # closing a broken connection must not keep the thread alive
                log.warning("closing the group-commit connection failed: %s", type(exc).__name__)

    def _commit(self, batch: list[_Work]) -> None:
        winners: dict[str, _Work] = {}
        for work in batch:
            if work.claim is not None:
                winners.setdefault(work.claim[0], work)
        try:
            accepted = self._write_rows(winners, batch)
        except Exception as exc:
            if len(batch) > 1:
                log.warning(
                    "group commit of %d calls failed (%s); retrying one by one",
                    len(batch),
                    type(exc).__name__,
                )
                for work in batch:
                    self._commit([work])
                return
            _fail(batch, exc)
            return
        self.batches += 1
        held = {id(work): _holds(work, winners, accepted) for work in batch}
        audited: list[_Work] = []
        drafts: list[EntryDraft] = []
        for work in batch:
            draft = work.audit if held[id(work)] else work.audit_if_replay
            if draft is None:
                _resolve(work, held[id(work)])  # nothing left to write for it: answer now
            else:
                audited.append(work)
                drafts.append(draft)
        if not drafts:
            return
        assert self._ledger is not None
        try:
            self._ledger.append_many(drafts)
        except Exception as exc:
            log.error("audit append of %d hook entries failed: %s", len(drafts), type(exc).__name__)
            _fail(audited, exc)
            return
        for work in audited:
            _resolve(work, held[id(work)])

    def _write_rows(self, winners: dict[str, _Work], batch: list[_Work]) -> set[str]:
        claims: dict[str, datetime] = {}
        for key, work in winners.items():
            assert work.claim is not None
            claims[key] = work.claim[1]
        # A card is written with its call's claim key; the row writer stores it only if that key is
        # held by this transaction. Losers of a claim race inside the batch are left out here already.
        cards = [
            (None if work.claim is None else work.claim[0], card)
            for work in batch
            if work.claim is None or winners[work.claim[0]] is work
            for card in work.cards
        ]
        if not claims and not cards:
            return set()
        if self._rows is None:
            self._rows = hook_row_writer(self._engine, purge_every_s=self.purge_every_s)
        return self._rows.write(claims, cards, datetime.now(UTC))


def _holds(work: _Work, winners: dict[str, _Work], accepted: set[str]) -> bool:
    """Whether the work's call may proceed: no claim, or the first claim of its key and held in the DB."""
    if work.claim is None:
        return True
    key = work.claim[0]
    return winners[key] is work and key in accepted


def _resolve(work: _Work, value: bool) -> None:
    if work.done.set_running_or_notify_cancel():
        work.done.set_result(value)


def _fail(batch: Sequence[_Work], exc: BaseException) -> None:
    for work in batch:
        if work.done.set_running_or_notify_cancel():
            work.done.set_exception(exc)

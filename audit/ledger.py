"""The audit ledger: the one way Veritrace writes to its append-only, verifiable log."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from audit.anchor import anchored_notes, post_http_anchor, write_directory_anchor
from audit.checkpoint_note import Checkpoint, CheckpointError, open_checkpoint, sign_checkpoint
from audit.compact_range import extend_frontier
from audit.config import LedgerConfig
from audit.entry import AppendedEntry, EntryDraft, LedgerEntry, now_timestamp
from audit.entry_batch import AppendedBatch, PreparedBatch, encode_batch, prepare_batch
from audit.hashing import EMPTY_ROOT, fold_subtree_roots
from audit.node_store import SqlRunner, reading
from audit.proof_types import ConsistencyProof, InclusionProof
from audit.sequencer import COPY_THRESHOLD, LockedTransaction, append_if_size_is, sequenced
from audit.signing import NoSigningKey, NoteSigner, NoteVerifier, load_signer, load_verifiers
from audit.tables import checkpoints, entries, payloads
from audit.tree_layout import STORED_MIN_LEVEL, consistency_ranges, frontier, inclusion_ranges
from audit.verification import VerificationReport, verify_ledger

logger = logging.getLogger(__name__)


class UnknownEntry(LookupError):
    """No entry at that index (yet)."""


class BadRange(ValueError):
    """Sizes or indexes outside what the log holds."""


class Ledger:
    """An RFC 9162 Merkle log of audit entries in the application database.

    Thread-safe and multi-process-safe: every write runs under the sequencer lock (see ``sequencer``).
    The perfect-subtree nodes from level ``STORED_MIN_LEVEL`` up are stored as entries are appended, so
    roots and proofs cost O(log n) reads (plus at most a few dozen leaf hashes) and appends O(1)
    amortised writes.
    """

    def __init__(self, engine: sa.Engine, config: LedgerConfig) -> None:
        self.engine = engine
        self.config = config
        self._write_lock = threading.Lock()
        # The compact range after the last append by this process: (size, [(level, hash)...]).
        self._compact: tuple[int, list[tuple[int, bytes]]] | None = None
        self._last_checkpoint: tuple[int, int] | None = None  # (size, timestamp_ms) as last seen
        self._warned_no_key = False

    # ----------------------------------------------------------------------------------------- writing

    def append(
        self,
        kind: str,
        actor: str,
        payload: Mapping[str, Any],
        *,
        patient_ref: str | None = None,
        study_uid: str | None = None,
    ) -> AppendedEntry:
        """Append one entry and return its index and leaf hash. Cheap enough for a request path."""
        draft = EntryDraft(
            kind=kind, actor=actor, payload=payload, patient_ref=patient_ref, study_uid=study_uid
        )
        return self.append_many([draft])[0]

    def append_many(self, drafts: Sequence[EntryDraft | Mapping[str, Any]]) -> Sequence[AppendedEntry]:
        """Append a batch atomically, at contiguous indexes, in one transaction.

        Drafts given as mappings are validated here; ``EntryDraft`` objects were validated when built.
        """
        validated = [d if isinstance(d, EntryDraft) else EntryDraft.model_validate(d) for d in drafts]
        if not validated:
            return []
        prepared = prepare_batch(validated)
        with self._write_lock:
            known = self._append_at_known_size(prepared)
        if known is not None:
            size, recorded_at, leaves = known
            self._checkpoint_if_due(size + len(validated))
            return AppendedBatch(size, recorded_at, leaves)
        with self._write_lock:
            with sequenced(self.engine, durable=self.config.sync_every_append) as tx:
                size = tx.size
                frontier = self._compact_range(tx, size)
                recorded_at = now_timestamp()
                encoded = encode_batch(prepared, size, recorded_at, self.config.inline_payload_limit)
                frontier, node_rows = extend_frontier(frontier, size, encoded.leaves, STORED_MIN_LEVEL)
                if encoded.blobs:
                    tx.executemany(
                        "INSERT INTO audit_payloads (digest, body) VALUES (?, ?) "
                        "ON CONFLICT (digest) DO NOTHING",
                        list(encoded.blobs.items()),
                    )
                tx.insert_leaves(encoded.entry_rows, node_rows)
            self._compact = (size + len(validated), frontier)
        self._checkpoint_if_due(size + len(validated))
        return AppendedBatch(size, recorded_at, encoded.leaves)

    def _append_at_known_size(self, prepared: PreparedBatch) -> tuple[int, str, list[bytes]] | None:
        """PostgreSQL, small batches: append in one round trip where this process knows the log's end.

        Returns (first index, recorded_at, leaf hashes), or None when the ordinary locked path must run
        (no cached frontier, SQLite, a batch for COPY, out-of-line payloads, or another writer got in
        first, which also drops the cache). Called under ``_write_lock``.
        """
        if self._compact is None or self.engine.dialect.name != "postgresql":
            return None
        if len(prepared.drafts) > COPY_THRESHOLD:
            return None
        size, frontier = self._compact
        recorded_at = now_timestamp()
        encoded = encode_batch(prepared, size, recorded_at, self.config.inline_payload_limit)
        if encoded.blobs:
            return None
        new_frontier, node_rows = extend_frontier(frontier, size, encoded.leaves, STORED_MIN_LEVEL)
        self._compact = None  # until the database says the append landed
        if not append_if_size_is(
            self.engine,
            durable=self.config.sync_every_append,
            size=size,
            entry_rows=encoded.entry_rows,
            node_rows=node_rows,
        ):
            return None
        self._compact = (size + len(encoded.leaves), new_frontier)
        return size, recorded_at, encoded.leaves

    def _compact_range(self, tx: LockedTransaction, size: int) -> list[tuple[int, bytes]]:
        """Roots of the perfect subtrees of the first ``size`` leaves, from cache or the nodes table."""
        if self._compact is not None and self._compact[0] == size:
            return list(self._compact[1])
        layout = frontier(size)
        found = tx.fetch_nodes(layout)
        return [(level, found[(level, index)]) for level, index in layout]

    # ------------------------------------------------------------------------------------- checkpoints

    def checkpoint(self) -> Checkpoint:
        """Sign the current size and root now, store it, and write it to the anchor(s).

        The commit is durable (flushed), which also makes every entry it covers durable.
        """
        signer = self._signer()
        checkpoint = self._take_checkpoint(signer, only_if_due=False)
        assert checkpoint is not None
        return checkpoint

    def checkpoint_if_due(self) -> Checkpoint | None:
        """Take a checkpoint if the log grew past ``checkpoint_every`` or ``checkpoint_interval_s``.

        Meant for a periodic task, so that a quiet log still gets its last entries signed.
        """
        return self._take_checkpoint(self._signer(), only_if_due=True)

    def _checkpoint_if_due(self, size: int) -> None:
        last = self._last_checkpoint
        if last is not None and not self._is_due(size, *last):
            return
        try:
            self._take_checkpoint(self._signer(), only_if_due=True)
        except NoSigningKey:
            if not self._warned_no_key:
                logger.warning("audit ledger has no signing key: checkpoints are not being taken")
                self._warned_no_key = True
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            logger.error("audit checkpoint failed after an append: %s", type(exc).__name__)

    def _is_due(self, size: int, last_size: int, last_ms: int) -> bool:
        if size <= last_size:
            return False
        every = self.config.checkpoint_every
        if size // every > last_size // every:
            return True
        return time.time() * 1000 - last_ms >= self.config.checkpoint_interval_s * 1000

    def _take_checkpoint(self, signer: NoteSigner, *, only_if_due: bool) -> Checkpoint | None:
        with self._write_lock:
            with sequenced(self.engine, durable=True) as tx:
                size = tx.size
                rows = tx.execute(
                    "SELECT seq, tree_size, timestamp_ms FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
                )
                last = (int(rows[0][0]), int(rows[0][1]), int(rows[0][2])) if rows else None
                if only_if_due and last is not None and not self._is_due(size, last[1], last[2]):
                    self._last_checkpoint = (last[1], last[2])
                    return None
                timestamp_ms = int(time.time() * 1000)
                if last is not None:
                    timestamp_ms = max(timestamp_ms, last[2] + 1)
                root = _root(tx, size)
                checkpoint = sign_checkpoint(signer, size, root, timestamp_ms)
                tx.execute(
                    "INSERT INTO audit_checkpoints (seq, tree_size, root_hash, timestamp_ms, key_id, note) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        0 if last is None else last[0] + 1,
                        size,
                        root,
                        timestamp_ms,
                        checkpoint.key_id,
                        checkpoint.note,
                    ),
                )
            self._last_checkpoint = (size, timestamp_ms)
        if self.config.anchor_dir is not None:
            write_directory_anchor(self.config.anchor_dir, size, timestamp_ms, checkpoint.note)
        if self.config.anchor_url is not None:
            post_http_anchor(self.config.anchor_url, checkpoint.note)
        return checkpoint

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint stored in the database (its signature is checked by ``verify``)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(checkpoints).order_by(checkpoints.c.seq.desc()).limit(1)).first()
        if row is None:
            return None
        return Checkpoint(
            origin=self.config.origin,
            size=int(row.tree_size),
            root_hash=bytes(row.root_hash),
            timestamp_ms=int(row.timestamp_ms),
            key_id=row.key_id,
            note=row.note,
        )

    def trusted_checkpoint(self) -> Checkpoint | None:
        """The newest correctly signed checkpoint in the anchor directory (outside the database)."""
        if self.config.anchor_dir is None:
            return None
        verifiers = self.verifiers()
        for _size, _ms, note in reversed(anchored_notes(self.config.anchor_dir)):
            try:
                return open_checkpoint(note, verifiers, self.config.origin)
            except CheckpointError:
                logger.warning("ignoring an anchored checkpoint whose signature does not verify")
        return None

    def _signer(self) -> NoteSigner:
        return load_signer(self.config.key_dir, self.config.origin)

    def verifiers(self) -> dict[bytes, NoteVerifier]:
        """Every published public key (current and rotated-out), by key id."""
        return load_verifiers(self.config.key_dir)

    def current_verifier(self) -> NoteVerifier:
        """The public half of the current signing key."""
        return self._signer().verifier

    # ---------------------------------------------------------------------------------------- reading

    def size(self) -> int:
        with reading(self.engine) as db:
            return db.read_size()

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` entries (default: all). Requires 0 <= size <= current size."""
        with reading(self.engine) as db:
            current = db.read_size()
            size = current if size is None else size
            if not 0 <= size <= current:
                raise BadRange(f"size {size} is outside 0..{current}")
            return _root(db, size)

    def entry(self, index: int) -> LedgerEntry:
        """The stored entry at ``index``, with its payload (loaded from out-of-line storage if needed)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(entries).where(entries.c.leaf_index == index)).first()
            if row is None:
                raise UnknownEntry(f"no entry at index {index}")
            body = row.payload
            if body is None:
                body = conn.execute(
                    sa.select(payloads.c.body).where(payloads.c.digest == row.payload_digest)
                ).scalar()
        return _entry_from_row(row, body)

    def iter_entries(
        self, start: int = 0, stop: int | None = None, *, batch: int = 1000
    ) -> Iterator[LedgerEntry]:
        """Entries in index order, read in batches (inline payloads only; out-of-line ones are None)."""
        position = start
        while stop is None or position < stop:
            upper = position + batch if stop is None else min(position + batch, stop)
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(entries)
                    .where(entries.c.leaf_index >= position, entries.c.leaf_index < upper)
                    .order_by(entries.c.leaf_index)
                ).all()
            if not rows:
                return
            for row in rows:
                yield _entry_from_row(row, row.payload)
            position = upper

    def inclusion_proof(self, index: int, size: int) -> InclusionProof:
        """Proof that entry ``index`` is in the tree of ``size``.

        Requires 0 <= index < size <= current size. One query for all the nodes it needs.
        """
        with reading(self.engine) as db:
            current = db.read_size()
            if not 0 <= index < size <= current:
                raise BadRange(f"need 0 <= index < size <= {current}, got index {index}, size {size}")
            hashes = db.range_hashes([(index, index + 1), (0, size), *inclusion_ranges(index, size)])
        return InclusionProof(
            index=index, size=size, leaf_hash=hashes[0], root_hash=hashes[1], path=hashes[2:]
        )

    def consistency_proof(self, first: int, second: int) -> ConsistencyProof:
        """Proof that the tree of ``second`` extends the one of ``first``. Requires 0 < first <= second."""
        with reading(self.engine) as db:
            current = db.read_size()
            if not 0 < first <= second <= current:
                raise BadRange(f"need 0 < first <= second <= {current}, got {first}, {second}")
            hashes = db.range_hashes([(0, first), (0, second), *consistency_ranges(first, second)])
        return ConsistencyProof(
            first=first, second=second, first_root=hashes[0], second_root=hashes[1], path=hashes[2:]
        )

    def verify(self, progress: Callable[[int], None] | None = None) -> VerificationReport:
        """Recompute every leaf, node and root from the database and hold them against the checkpoints.

        The anchored checkpoints (outside the database) are trusted; database checkpoints count only if
        their signature verifies. The report names the first index that does not hold up.
        """
        return verify_ledger(self.engine, self.config, self.verifiers(), progress)


def _root(db: SqlRunner, size: int) -> bytes:
    if size == 0:
        return EMPTY_ROOT
    layout = frontier(size)
    found = db.fetch_nodes(layout)
    return fold_subtree_roots([found[node] for node in layout])


def _entry_from_row(row: sa.Row[Any], body: str | None) -> LedgerEntry:
    return LedgerEntry(
        index=int(row.leaf_index),
        kind=row.kind,
        actor=row.actor,
        patient_ref=row.patient_ref,
        study_uid=row.study_uid,
        recorded_at=row.recorded_at,
        payload_digest=row.payload_digest,
        payload=None if body is None else json.loads(body),
        payload_inline=row.payload is not None,
        leaf_hash=bytes(row.leaf_hash).hex(),
    )

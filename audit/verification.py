"""Full verification: recompute the whole tree from the database and hold it against signed checkpoints.

What is checked, in one pass over each table:

- every entry row re-encodes to bytes whose leaf hash equals the one stored at append time, and its
  payload matches its digest;
- every stored tree node equals the one recomputed from the leaves (proofs are served from these), and
  every level from ``STORED_MIN_LEVEL`` up is complete;
- the root at the size of every signed checkpoint equals the signed root. Checkpoints from the anchor
  directory are trusted as they are; database checkpoints only when their signature verifies.

The report names the first index that does not hold up. An edit that also rewrote the stored hashes is
caught by the checkpoint roots and localised to the entries after the last checkpoint that still matches.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pydantic
import sqlalchemy as sa

from audit.anchor import anchored_notes
from audit.checkpoint_note import CheckpointError, open_checkpoint
from audit.config import LedgerConfig
from audit.entry import encode_entry
from audit.hashing import EMPTY_ROOT, HASH_SIZE, fold_subtree_roots
from audit.signing import NoteVerifier
from audit.tables import checkpoints, entries, nodes, payloads
from audit.tree_layout import STORED_MIN_LEVEL, frontier

STREAM_BATCH = 10_000


class VerificationReport(pydantic.BaseModel):
    """The outcome of ``Ledger.verify``."""

    ok: bool
    size: int
    """Entries found in the database."""
    trusted_size: int | None
    """Size of the newest trusted checkpoint, or None when there is none."""
    trusted_source: str
    """"anchor", "database" or "none": where the newest trusted checkpoint came from."""
    checkpoints_checked: int
    first_bad_index: int | None
    problem: str | None
    seconds: float


@dataclass
class _Findings:
    problems: list[tuple[int, str]] = field(default_factory=list)
    global_problem: str | None = None

    def add(self, index: int, message: str) -> None:
        self.problems.append((index, message))

    def first(self) -> tuple[int | None, str | None]:
        if self.problems:
            return min(self.problems, key=lambda p: p[0])
        return None, self.global_problem


def verify_ledger(
    engine: sa.Engine,
    config: LedgerConfig,
    verifiers: dict[bytes, NoteVerifier],
    progress: Callable[[int], None] | None = None,
) -> VerificationReport:
    """``progress`` is told how many entries have been re-hashed so far (every stream batch), so a
    long run over a large log can show how far it got."""
    started = time.perf_counter()
    findings = _Findings()
    with engine.connect() as conn:
        trusted, source, newest, checked = _trusted_roots(conn, config, verifiers, findings)
        levels = _check_entries(conn, findings, progress)
        size = len(levels[0]) // HASH_SIZE
        _check_nodes(conn, levels, findings)
    _check_roots(levels, size, trusted, findings)
    index, problem = findings.first()
    return VerificationReport(
        ok=problem is None,
        size=size,
        trusted_size=newest,
        trusted_source=source,
        checkpoints_checked=checked,
        first_bad_index=index,
        problem=problem,
        seconds=round(time.perf_counter() - started, 3),
    )


def _trusted_roots(
    conn: sa.Connection, config: LedgerConfig, verifiers: dict[bytes, NoteVerifier], findings: _Findings
) -> tuple[dict[int, bytes], str, int | None, int]:
    """Signed roots by size: anchored ones, then database ones whose signatures verify."""
    trusted: dict[int, bytes] = {}
    newest: int | None = None
    source = "none"
    checked = 0

    def trust(size: int, root: bytes, where: str) -> None:
        nonlocal newest
        if size in trusted and trusted[size] != root:
            findings.add(size, f"two signed checkpoints of size {size} disagree on the root: the log forked")
        trusted.setdefault(size, root)
        newest = size if newest is None else max(newest, size)

    if config.anchor_dir is not None:
        for size, _ms, note in anchored_notes(config.anchor_dir):
            checked += 1
            try:
                checkpoint = open_checkpoint(note, verifiers, config.origin)
            except CheckpointError as exc:
                findings.global_problem = f"anchored checkpoint of size {size} is invalid: {exc}"
                continue
            trust(checkpoint.size, checkpoint.root_hash, "anchor")
            source = "anchor"
    last_ms = -1
    for row in conn.execute(sa.select(checkpoints).order_by(checkpoints.c.seq)):
        checked += 1
        try:
            checkpoint = open_checkpoint(row.note, verifiers, config.origin)
        except CheckpointError as exc:
            findings.global_problem = f"database checkpoint #{row.seq} is invalid: {exc}"
            continue
        if (checkpoint.size, checkpoint.root_hash, checkpoint.timestamp_ms) != (
            row.tree_size,
            bytes(row.root_hash),
            row.timestamp_ms,
        ):
            findings.global_problem = f"database checkpoint #{row.seq}: columns differ from its signed note"
            continue
        if checkpoint.timestamp_ms <= last_ms:
            findings.global_problem = f"database checkpoint #{row.seq}: timestamp does not increase"
        last_ms = checkpoint.timestamp_ms
        trust(checkpoint.size, checkpoint.root_hash, "database")
        if source == "none":
            source = "database"
    return trusted, source, newest, checked


def _check_entries(
    conn: sa.Connection, findings: _Findings, progress: Callable[[int], None] | None = None
) -> list[bytearray]:
    """Re-encode and re-hash every entry against its stored leaf hash; returns the stored leaf hashes.

    The tree above is then checked from the stored leaf hashes up, so a mismatch is reported where it is
    (an altered entry at its own index, a stale node at the entries it covers) instead of at every
    ancestor of a changed leaf.
    """
    leaves = bytearray()
    external: dict[str, int] = {}
    result = conn.execution_options(yield_per=STREAM_BATCH).execute(
        sa.select(
            entries.c.leaf_index,
            entries.c.kind,
            entries.c.actor,
            entries.c.patient_ref,
            entries.c.study_uid,
            entries.c.recorded_at,
            entries.c.payload_digest,
            entries.c.payload,
            entries.c.leaf_hash,
        ).order_by(entries.c.leaf_index)
    )
    sha256 = hashlib.sha256
    reported_alteration = False
    for expected, (
        index,
        kind,
        actor,
        patient_ref,
        study_uid,
        recorded_at,
        digest,
        payload,
        stored,
    ) in enumerate(result):
        if index != expected:
            findings.add(
                expected, f"entries {expected}..{index - 1} are missing (deleted behind the triggers)"
            )
            break
        data = encode_entry(
            index=index,
            kind=kind,
            actor=actor,
            patient_ref=patient_ref,
            study_uid=study_uid,
            recorded_at=recorded_at,
            payload_digest=digest,
            payload_json=payload,
        )
        leaf = sha256(b"\x00" + data).digest()
        if not reported_alteration:
            if leaf != bytes(stored):
                findings.add(index, f"entry {index} was altered: it no longer hashes to its stored leaf hash")
                reported_alteration = True
            elif payload is None:
                external[digest] = index
            elif "sha256:" + sha256(payload.encode()).hexdigest() != digest:
                findings.add(index, f"entry {index}: payload does not match its digest")
                reported_alteration = True
        leaves += stored
        if progress is not None and (index + 1) % STREAM_BATCH == 0:
            progress(index + 1)
    result.close()
    if progress is not None:
        progress(len(leaves) // HASH_SIZE)
    _check_external_payloads(conn, external, findings)
    return [leaves]


def _check_external_payloads(conn: sa.Connection, external: dict[str, int], findings: _Findings) -> None:
    digests = list(external)
    for start in range(0, len(digests), 500):
        chunk = digests[start : start + 500]
        bodies = dict(
            conn.execute(
                sa.select(payloads.c.digest, payloads.c.body).where(payloads.c.digest.in_(chunk))
            ).all()
        )
        for digest in chunk:
            body = bodies.get(digest)
            if body is None or "sha256:" + hashlib.sha256(body.encode()).hexdigest() != digest:
                findings.add(
                    external[digest],
                    f"entry {external[digest]}: its out-of-line payload is missing or altered",
                )


def _check_nodes(conn: sa.Connection, levels: list[bytearray], findings: _Findings) -> None:
    """Each stored node must be the hash of its two stored children; builds ``levels`` from the nodes."""
    sha256 = hashlib.sha256
    level = 0
    while len(levels[level]) >= 2 * HASH_SIZE:
        below = levels[level]
        width = len(below) // (2 * HASH_SIZE)
        expected = bytearray()
        for k in range(width):
            expected += sha256(b"\x01" + below[64 * k : 64 * k + 64]).digest()
        level += 1
        stored_index: list[int] = []
        stored = bytearray()
        for node_index, value in conn.execute(
            sa.select(nodes.c.node_index, nodes.c.hash)
            .where(nodes.c.level == level)
            .order_by(nodes.c.node_index)
        ):
            stored_index.append(node_index)
            stored += value
        if level < STORED_MIN_LEVEL:
            # Not written any more (recomputed from leaves when needed); a log begun before that has
            # them for its older part, and each one still there must be right.
            levels.append(expected)
            _check_optional_nodes(level, width, stored_index, stored, expected, findings)
            continue
        levels.append(stored if stored_index == list(range(width)) else expected)
        if stored == expected and stored_index == list(range(width)):
            continue
        for k in range(width):
            if k >= len(stored_index) or stored_index[k] != k:
                findings.add(k << level, f"tree node ({level}, {k}) is missing from the stored tree")
                break
            if stored[32 * k : 32 * k + 32] != expected[32 * k : 32 * k + 32]:
                first, last = k << level, ((k + 1) << level) - 1
                findings.add(
                    first, f"entries {first}..{last} do not match the tree stored when they were appended"
                )
                break
        else:
            surplus = len(stored_index) - width
            findings.add(width << level, f"stored tree has {surplus} node(s) beyond the log at level {level}")
    extra = conn.execute(sa.select(sa.func.count()).select_from(nodes).where(nodes.c.level > level)).scalar()
    if extra:
        size = len(levels[0]) // HASH_SIZE
        findings.add(
            size, f"stored tree has {extra} node(s) above a log of {size} entries: entries were removed"
        )


def _check_optional_nodes(
    level: int,
    width: int,
    stored_index: list[int],
    stored: bytearray,
    expected: bytearray,
    findings: _Findings,
) -> None:
    for position, k in enumerate(stored_index):
        if k >= width:
            findings.add(width << level, f"stored tree has node(s) beyond the log at level {level}")
            return
        if stored[32 * position : 32 * position + 32] != expected[32 * k : 32 * k + 32]:
            first, last = k << level, ((k + 1) << level) - 1
            findings.add(
                first, f"entries {first}..{last} do not match the tree stored when they were appended"
            )
            return


def _check_roots(levels: list[bytearray], size: int, trusted: dict[int, bytes], findings: _Findings) -> None:
    good = 0
    for checkpoint_size in sorted(trusted):
        if checkpoint_size > size:
            findings.add(
                size,
                f"a checkpoint signed {checkpoint_size} entries but the database has {size}: tail deleted",
            )
            return
        if _root_of(levels, checkpoint_size) != trusted[checkpoint_size]:
            findings.add(
                good,
                f"entries {good}..{checkpoint_size - 1} differ from those signed in the checkpoint of size "
                f"{checkpoint_size} (rewritten with their hashes, or forked)",
            )
            return
        good = checkpoint_size


def _root_of(levels: list[bytearray], size: int) -> bytes:
    if size == 0:
        return EMPTY_ROOT
    roots = [bytes(levels[level][32 * k : 32 * k + 32]) for level, k in frontier(size)]
    return fold_subtree_roots(roots)

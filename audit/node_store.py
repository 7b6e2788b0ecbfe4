"""Reads of stored tree nodes: a proof's nodes in one query, whatever the log's size.

Like the sequencer, these run on the DBAPI connection directly: a proof is a few index lookups, and
SQLAlchemy's statement overhead would be most of its cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy

from audit.hashing import fold_subtree_roots, hash_children
from audit.tree_layout import STORED_MIN_LEVEL, NodeId, subtree_nodes

SIZE_QUERY = "SELECT max(leaf_index) FROM audit_entries"
LEAF_RANGE_QUERY = (
    "SELECT 0, leaf_index, leaf_hash FROM audit_entries WHERE leaf_index >= ? AND leaf_index < ?"
)


class LedgerIntegrityError(RuntimeError):
    """A node or entry that must exist is missing: the tables were altered behind the triggers."""


class SqlRunner:
    """A DBAPI cursor with ``?`` placeholders on every dialect the ledger supports."""

    def __init__(self, cursor: Any, dialect: str) -> None:
        self._cursor = cursor
        self._postgres = dialect == "postgresql"

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s") if self._postgres else text

    def execute(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cursor.execute(self._sql(text), params)
        return list(self._cursor.fetchall()) if self._cursor.description else []

    def executemany(self, text: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cursor.executemany(self._sql(text), rows)

    def read_size(self) -> int:
        """Number of entries: one more than the largest leaf index (indexes are contiguous)."""
        last = self.execute(SIZE_QUERY)[0][0]
        return 0 if last is None else int(last) + 1

    def fetch_nodes(self, wanted: Iterable[NodeId]) -> dict[NodeId, bytes]:
        """Hashes of the given nodes (level 0: leaf hashes), in one query. Raises if any is missing.

        Nodes below ``STORED_MIN_LEVEL`` are not stored: they are recomputed from their leaf hashes,
        read as primary-key ranges in the same query.
        """
        nodes = set(wanted)
        if not nodes:
            return {}
        stored: dict[int, list[int]] = {}
        leaf_ranges: set[tuple[int, int]] = set()
        for level, index in nodes:
            if level >= STORED_MIN_LEVEL:
                stored.setdefault(level, []).append(index)
            else:
                leaf_ranges.add((index << level, (index + 1) << level))
        parts: list[str] = []
        params: list[int] = []
        for lo, hi in _merged(leaf_ranges):
            if hi - lo == 1:
                parts.append("SELECT 0, leaf_index, leaf_hash FROM audit_entries WHERE leaf_index = ?")
                params.append(lo)
            else:
                parts.append(LEAF_RANGE_QUERY)
                params.extend((lo, hi))
        if stored:
            # Per-level IN lists: both engines turn these into primary-key lookups (a row-value IN
            # list makes SQLite scan the table).
            conditions = []
            for level, indexes in sorted(stored.items()):
                conditions.append(f"(level = ? AND node_index IN ({','.join('?' * len(indexes))}))")
                params.append(level)
                params.extend(indexes)
            parts.append("SELECT level, node_index, hash FROM audit_nodes WHERE " + " OR ".join(conditions))
        rows = self.execute(" UNION ALL ".join(parts), params)
        leaves: dict[int, bytes] = {}
        found: dict[NodeId, bytes] = {}
        for level, index, value in rows:
            if level == 0:
                leaves[int(index)] = bytes(value)
            else:
                found[(int(level), int(index))] = bytes(value)
        missing = sum(len(v) for v in stored.values()) - len(found)
        missing += sum(hi - lo for lo, hi in _merged(leaf_ranges)) - len(leaves)
        if missing:
            raise LedgerIntegrityError(f"{missing} tree node(s) missing: the ledger tables were altered")
        for level, index in nodes:
            if level < STORED_MIN_LEVEL:
                found[(level, index)] = perfect_subtree_hash(
                    [leaves[i] for i in range(index << level, (index + 1) << level)]
                )
        return found

    def range_hashes(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """MTH(D[lo:hi]) for each range, from stored nodes in one query."""
        layouts = [subtree_nodes(lo, hi) for lo, hi in ranges]
        found = self.fetch_nodes(node for layout in layouts for node in layout)
        return [fold_subtree_roots([found[node] for node in layout]) for layout in layouts]


def _merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Half-open ranges with overlapping or touching ones joined, in order."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def perfect_subtree_hash(leaves: list[bytes]) -> bytes:
    """Root of a perfect subtree from its 2**k leaf hashes, pairing level by level."""
    row = leaves
    while len(row) > 1:
        row = [hash_children(row[i], row[i + 1]) for i in range(0, len(row), 2)]
    return row[0]


@contextmanager
def reading(engine: sqlalchemy.Engine) -> Iterator[SqlRunner]:
    """A pooled connection for reads; whatever transaction the driver opened is rolled back after."""
    raw = engine.raw_connection()
    try:
        yield SqlRunner(raw.cursor(), engine.dialect.name)
    finally:
        raw.close()

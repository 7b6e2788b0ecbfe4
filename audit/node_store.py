"""Reads of stored tree nodes: a proof's nodes in one query, whatever the log's size.

Like the sequencer, these run on the DBAPI connection directly: a proof is a few index lookups, and
SQLAlchemy's statement overhead would be most of its cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy

from audit.hashing import fold_subtree_roots
from audit.tree_layout import NodeId, subtree_nodes

SIZE_QUERY = "SELECT max(leaf_index) FROM audit_entries"


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
        """Hashes of the given nodes (level 0: the entries' leaf hashes). Raises if any is missing."""
        by_level: dict[int, list[int]] = {}
        for level, index in set(wanted):
            by_level.setdefault(level, []).append(index)
        if not by_level:
            return {}
        parts: list[str] = []
        params: list[int] = []
        leaves = by_level.pop(0, None)
        if leaves:
            marks = ",".join("?" * len(leaves))
            parts.append(f"SELECT 0, leaf_index, leaf_hash FROM audit_entries WHERE leaf_index IN ({marks})")
            params.extend(leaves)
        if by_level:
            # Per-level IN lists: both engines turn these into primary-key lookups (a row-value IN
            # list makes SQLite scan the table).
            conditions = []
            for level, indexes in sorted(by_level.items()):
                conditions.append(f"(level = ? AND node_index IN ({','.join('?' * len(indexes))}))")
                params.append(level)
                params.extend(indexes)
            parts.append("SELECT level, node_index, hash FROM audit_nodes WHERE " + " OR ".join(conditions))
        rows = self.execute(" UNION ALL ".join(parts), params)
        found = {(int(level), int(index)): bytes(value) for level, index, value in rows}
        expected = sum(len(v) for v in by_level.values()) + len(leaves or ())
        if len(found) != expected:
            raise LedgerIntegrityError(
                f"{expected - len(found)} tree node(s) missing: the ledger tables were altered"
            )
        return found

    def range_hashes(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """MTH(D[lo:hi]) for each range, from stored nodes in one query."""
        layouts = [subtree_nodes(lo, hi) for lo, hi in ranges]
        found = self.fetch_nodes(node for layout in layouts for node in layout)
        return [fold_subtree_roots([found[node] for node in layout]) for layout in layouts]


@contextmanager
def reading(engine: sqlalchemy.Engine) -> Iterator[SqlRunner]:
    """A pooled connection for reads; whatever transaction the driver opened is rolled back after."""
    raw = engine.raw_connection()
    try:
        yield SqlRunner(raw.cursor(), engine.dialect.name)
    finally:
        raw.close()

"""The one sequencer: a write transaction that holds the ledger's lock for its whole length.

Leaf indexes are read and assigned inside it, so concurrent appenders in any number of processes form
one linear log. PostgreSQL: a transaction-scoped advisory lock under READ COMMITTED, so every read after
the lock sees the previous holder's commit. SQLite: ``BEGIN IMMEDIATE`` takes the database write lock.

This is the append hot path, so it talks to the DBAPI connection directly: SQLAlchemy's per-statement
overhead is ten times the cost of the statements themselves here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy
from psycopg.pq import TransactionStatus

from audit.node_store import SIZE_QUERY, SqlRunner

ADVISORY_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"veritrace.audit.sequencer").digest()[:8], "big", signed=True
)
"""A fixed 64-bit key for pg_advisory_xact_lock, derived from a name so it does not collide by accident."""


ENTRY_COLUMNS = (
    "leaf_index",
    "recorded_at",
    "kind",
    "actor",
    "patient_ref",
    "study_uid",
    "payload_digest",
    "payload",
    "leaf_hash",
)
NODE_COLUMNS = ("level", "node_index", "hash")
COPY_THRESHOLD = 64
"""PostgreSQL batches larger than this go through COPY; smaller ones through one INSERT statement."""


class LockedTransaction(SqlRunner):
    """A DBAPI cursor inside the sequencer's transaction; SQL is written with ``?`` placeholders."""

    def __init__(self, cursor: Any, dialect: str, size: int) -> None:
        super().__init__(cursor, dialect)
        self.dialect = dialect
        self.size = size
        """Entries in the log when the lock was taken."""

    def insert_leaves(self, entry_rows: Sequence[Sequence[Any]], node_rows: Sequence[Sequence[Any]]) -> None:
        """Insert new entries and the tree nodes they complete, in as few round trips as the engine allows."""
        if self.dialect != "postgresql":
            self.executemany(_insert_sql("audit_entries", ENTRY_COLUMNS, 1), entry_rows)
            self.executemany(_insert_sql("audit_nodes", NODE_COLUMNS, 1), node_rows)
            return
        if len(entry_rows) > COPY_THRESHOLD:
            for table, columns, rows in (
                ("audit_entries", ENTRY_COLUMNS, entry_rows),
                ("audit_nodes", NODE_COLUMNS, node_rows),
            ):
                with self._cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            return
        # A data-modifying CTE puts both inserts in one statement: one round trip for a single append.
        sql = _insert_sql("audit_entries", ENTRY_COLUMNS, len(entry_rows))
        params = [value for row in entry_rows for value in row]
        if node_rows:
            sql = f"WITH nodes AS ({_insert_sql('audit_nodes', NODE_COLUMNS, len(node_rows))}) {sql}"
            params = [value for row in node_rows for value in row] + params
        self.execute(sql, params)


def _insert_sql(table: str, columns: Sequence[str], rows: int) -> str:
    values = ",".join(["(" + ",".join("?" * len(columns)) + ")"] * rows)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values}"


def append_if_size_is(
    engine: sqlalchemy.Engine,
    *,
    durable: bool,
    size: int,
    entry_rows: Sequence[Sequence[Any]],
    node_rows: Sequence[Sequence[Any]],
) -> bool:
    """PostgreSQL in one round trip: lock, insert only if the log still holds ``size`` entries, commit.

    For a process whose own last append left the log at ``size``: it can hash the new entries at their
    indexes before asking, instead of spending a round trip on reading the size under the lock, one on
    the insert and one on the commit. The statements go in one pipeline (the insert prepared after a
    few uses); the guard is evaluated under the same lock and snapshot rules as ``sequenced``, so
    indexes stay contiguous. Returns False, having written nothing, when another process appended in
    between; the caller then takes the ordinary path.
    """
    if engine.dialect.name != "postgresql":
        raise NotImplementedError("the one-round-trip append is for PostgreSQL")
    last = size - 1 if size else None
    insert = _guarded_insert("audit_entries", ENTRY_COLUMNS, len(entry_rows))
    params: list[Any] = [value for row in entry_rows for value in row] + [last]
    if node_rows:
        nodes = _guarded_insert("audit_nodes", NODE_COLUMNS, len(node_rows))
        insert = f"WITH nodes AS ({nodes}) {insert}"
        params = [value for row in node_rows for value in row] + [last] + params
    raw = engine.raw_connection()
    driver: Any = raw.driver_connection
    try:
        raw.rollback()
        driver.autocommit = True
        control, inserting = driver.cursor(), driver.cursor()
        try:
            with driver.pipeline():
                control.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                control.execute(f"SET LOCAL synchronous_commit = {'on' if durable else 'off'}")
                control.execute(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
                inserting.execute(insert, params)
                control.execute("COMMIT")
        except BaseException:
            if driver.info.transaction_status != TransactionStatus.IDLE:
                control.execute("ROLLBACK")
            raise
        return bool(inserting.rowcount == len(entry_rows))
    finally:
        try:
            driver.autocommit = False
        finally:
            raw.close()


def _guarded_insert(table: str, columns: Sequence[str], rows: int) -> str:
    """INSERT of ``rows`` parameter rows, done only if the last leaf index equals the final parameter."""
    values = ",".join(["(" + ",".join(["%s"] * len(columns)) + ")"] * rows)
    names = ", ".join(columns)
    return (
        f"INSERT INTO {table} ({names}) SELECT * FROM (VALUES {values}) AS v ({names}) "
        "WHERE (SELECT max(leaf_index) FROM audit_entries) IS NOT DISTINCT FROM %s::bigint"
    )


@contextmanager
def sequenced(engine: sqlalchemy.Engine, *, durable: bool) -> Iterator[LockedTransaction]:
    """A locked write transaction; commits on normal exit, rolls back on error.

    ``durable=False`` lets the commit return before the log is flushed to disk; a later durable commit
    (every checkpoint is one) flushes everything before it.
    """
    dialect = engine.dialect.name
    if dialect == "postgresql":
        with _postgres_transaction(engine, durable) as transaction:
            yield transaction
    elif dialect == "sqlite":
        with _sqlite_transaction(engine, durable) as transaction:
            yield transaction
    else:
        raise NotImplementedError(f"the audit ledger supports PostgreSQL and SQLite, not {dialect}")


@contextmanager
def _postgres_transaction(engine: sqlalchemy.Engine, durable: bool) -> Iterator[LockedTransaction]:
    raw = engine.raw_connection()
    driver: Any = raw.driver_connection
    try:
        raw.rollback()  # whatever the pool handed back, start outside a transaction
        driver.autocommit = True  # we send BEGIN and COMMIT ourselves, batched with other statements
        cursor = raw.cursor()
        # One round trip (simple query protocol): begin, flush policy, lock, current size.
        cursor.execute(
            "BEGIN ISOLATION LEVEL READ COMMITTED; "
            f"SET LOCAL synchronous_commit = {'on' if durable else 'off'}; "
            f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY}); {SIZE_QUERY}"
        )
        while cursor.nextset():
            pass
        last = _first_value(cursor)
        transaction = LockedTransaction(cursor, "postgresql", 0 if last is None else int(last) + 1)
        try:
            yield transaction
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")
    finally:
        try:
            driver.autocommit = False
        finally:
            raw.close()


@contextmanager
def _sqlite_transaction(engine: sqlalchemy.Engine, durable: bool) -> Iterator[LockedTransaction]:
    raw = engine.raw_connection()
    driver: Any = raw.driver_connection
    try:
        if driver.in_transaction:
            raw.rollback()
        cursor = raw.cursor()
        cursor.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute(SIZE_QUERY)
        last = _first_value(cursor)
        transaction = LockedTransaction(cursor, "sqlite", 0 if last is None else int(last) + 1)
        try:
            yield transaction
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")
    finally:
        try:
            # Leave the pooled connection with SQLite's default, whoever uses it next.
            raw.cursor().execute("PRAGMA synchronous=FULL")
        finally:
            raw.close()


def _first_value(cursor: Any) -> Any:
    row = cursor.fetchone()
    return None if row is None else row[0]

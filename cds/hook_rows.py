"""The rows one group-commit cycle writes: ``jti`` claims and card rows, in one transaction.

Two implementations of one contract (``HookRowWriter.write``):

- PostgreSQL: one statement, one round trip, whatever the batch size. Both inserts are data-modifying
  CTEs over ``json_to_recordset`` of one JSON parameter each, so the statement text never changes and
  the server keeps it prepared. It runs on a connection the writer keeps to itself, with
  ``synchronous_commit = off`` for the session (the hook path's flush policy) —
  a single statement is its own transaction, so there is no ``SET LOCAL`` to send first.
- SQLite (the embedded install and most tests): SQLAlchemy Core statements in one transaction.

The ``jti`` upsert inserts new keys and revives expired ones; the keys it returns are the ones this
transaction now holds. Every other key is held, unexpired, by an earlier token: a replay.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import Engine, delete, insert
from sqlalchemy.dialects import sqlite

from integrations.store.models import Card, SeenJwtId

POSTGRES_WRITE = """
WITH claimed AS (
    INSERT INTO cds_seen_jti (key, expires_at)
    SELECT key, expires_at
    FROM json_to_recordset(%(claims)s::json) AS t(key varchar, expires_at timestamptz)
    ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at
    WHERE cds_seen_jti.expires_at < %(now)s
    RETURNING key
), stored AS (
    INSERT INTO cards (uuid, service_id, hook_instance, patient_id, report_id, payload, created_at)
    SELECT uuid, service_id, hook_instance, patient_id, report_id, payload, %(now)s
    FROM json_to_recordset(%(cards)s::json) AS t(
        claim_key varchar, uuid varchar, service_id varchar, hook_instance varchar, patient_id varchar,
        report_id varchar, payload json
    )
    WHERE t.claim_key IS NULL OR t.claim_key IN (SELECT key FROM claimed)
)
SELECT key FROM claimed
"""
POSTGRES_PURGE = "DELETE FROM cds_seen_jti WHERE expires_at < %(now)s"


@dataclass(frozen=True)
class CardRow:
    """One card as stored in ``cards`` (the wire form in ``payload``)."""

    uuid: str
    service_id: str
    hook_instance: str
    patient_id: str | None
    report_id: str | None
    payload: dict[str, Any]


ClaimedCard = tuple[str | None, CardRow]
"""A card and the claim key of its call: stored only if that key is held (None: no claim needed)."""


class HookRowWriter(Protocol):
    def write(self, claims: dict[str, datetime], cards: Sequence[ClaimedCard], now: datetime) -> set[str]:
        """Commit claims (key -> expiry) and card rows together; returns the keys now held."""
        ...

    def close(self) -> None: ...


def hook_row_writer(engine: Engine, *, purge_every_s: float = 60.0) -> HookRowWriter:
    dialect = engine.dialect.name
    if dialect == "postgresql":
        return PostgresHookRows(engine, purge_every_s=purge_every_s)
    if dialect == "sqlite":
        return SqliteHookRows(engine, purge_every_s=purge_every_s)
    raise NotImplementedError(f"the CDS hook path supports PostgreSQL and SQLite, not {dialect}")


class _PurgeClock:
    """Expired ``jti`` rows are deleted at most every ``purge_every_s`` (the first write purges)."""

    def __init__(self, purge_every_s: float) -> None:
        self.purge_every_s = purge_every_s
        # None, not 0.0: the monotonic clock starts near zero at boot, so a process started within
        # `purge_every_s` of boot would otherwise skip its first purge.
        self._last: float | None = None

    def due(self) -> bool:
        tick = time.monotonic()
        if self._last is not None and tick - self._last < self.purge_every_s:
            return False
        self._last = tick
        return True


class PostgresHookRows:
    def __init__(self, engine: Engine, *, purge_every_s: float) -> None:
        self._engine = engine
        self.purge = _PurgeClock(purge_every_s)
        self._fairy: Any = None
        self._connection: Any = None

    def _driver(self) -> Any:
        if self._connection is None or self._connection.closed:
            fairy = self._engine.raw_connection()
            connection: Any = fairy.driver_connection
            fairy.detach()  # session settings below must not leak into the pool
            connection.rollback()
            connection.autocommit = True
            connection.execute("SET synchronous_commit = off")
            self._fairy, self._connection = fairy, connection
        return self._connection

    def write(self, claims: dict[str, datetime], cards: Sequence[ClaimedCard], now: datetime) -> set[str]:
        connection = self._driver()
        # Each side of the batch travels as one JSON parameter: encoded by orjson in C, where
        # psycopg's array adapter escapes every element's quotes in Python.
        params = {
            "now": now,
            "claims": orjson.dumps([{"key": k, "expires_at": e} for k, e in claims.items()]).decode(),
            "cards": orjson.dumps(
                [
                    {
                        "claim_key": key,
                        "uuid": c.uuid,
                        "service_id": c.service_id,
                        "hook_instance": c.hook_instance,
                        "patient_id": c.patient_id,
                        "report_id": c.report_id,
                        "payload": c.payload,
                    }
                    for key, c in cards
                ]
            ).decode(),
        }
        try:
            if self.purge.due():
                connection.execute(POSTGRES_PURGE, {"now": now})
            rows = connection.execute(POSTGRES_WRITE, params).fetchall()
        except Exception:
            self.close()  # the next cycle starts from a fresh connection
            raise
        return {row[0] for row in rows}

    def close(self) -> None:
        fairy, self._fairy, self._connection = self._fairy, None, None
        if fairy is not None:
            fairy.close()


class SqliteHookRows:
    def __init__(self, engine: Engine, *, purge_every_s: float) -> None:
        self._engine = engine
        self.purge = _PurgeClock(purge_every_s)

    def write(self, claims: dict[str, datetime], cards: Sequence[ClaimedCard], now: datetime) -> set[str]:
        with self._engine.begin() as conn:
            if self.purge.due():
                conn.execute(delete(SeenJwtId).where(SeenJwtId.expires_at < now))
            accepted: set[str] = set()
            if claims:
                accepted = set(conn.scalars(_sqlite_upsert(claims, now)))
            kept = [c for key, c in cards if key is None or key in accepted]
            if kept:
                conn.execute(
                    insert(Card.__table__),  # type: ignore[arg-type]
                    [
                        {
                            "uuid": c.uuid,
                            "service_id": c.service_id,
                            "hook_instance": c.hook_instance,
                            "patient_id": c.patient_id,
                            "report_id": c.report_id,
                            "payload": c.payload,
                            "created_at": now,
                        }
                        for c in kept
                    ],
                )
        return accepted

    def close(self) -> None:
        return None


def _sqlite_upsert(claims: dict[str, datetime], now: datetime) -> Any:
    upsert = sqlite.insert(SeenJwtId).values(
        [{"key": key, "expires_at": expires_at} for key, expires_at in claims.items()]
    )
    return upsert.on_conflict_do_update(
        index_elements=[SeenJwtId.key],
        set_={"expires_at": upsert.excluded.expires_at},
        where=SeenJwtId.expires_at < now,
    ).returning(SeenJwtId.key)

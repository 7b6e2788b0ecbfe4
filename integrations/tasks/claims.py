"""Exclusive claims on an idempotency key while a task runs, so a duplicate delivery never runs twice at once.

Duplicates are normal here: `acks_late` redelivers after a broker or worker restart while the first run may
still be going, and `requeue_pending` in every DICOM process re-sends analyses still "queued". The stored
result is already unique (one report per analysis), but two concurrent runs would still draft twice.

On PostgreSQL the claim is a session-level advisory lock held on its own autocommit connection: when the
worker is killed (even with SIGKILL) its connection closes and the server releases the lock at once, so
there are no leases to expire and no stale holders to clean up. On SQLite (the one-box deployment, one
worker process) a per-process lock gives the same guarantee.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text

log = logging.getLogger(__name__)

_local_claims: set[str] = set()
_local_lock = threading.Lock()


def advisory_key(idempotency_key: str) -> int:
    """A signed 64-bit lock id derived from the key (PostgreSQL advisory locks take a bigint)."""
    return int.from_bytes(hashlib.sha256(idempotency_key.encode()).digest()[:8], "big", signed=True)


@contextmanager
def exclusive_claim(engine: Engine, idempotency_key: str) -> Iterator[bool]:
    """Yields True when this caller holds the key until the block ends, False when someone else holds it."""
    if engine.dialect.name != "postgresql":
        with _local_claim(idempotency_key) as held:
            yield held
        return
    key = advisory_key(idempotency_key)
    connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    held = False
    try:
        held = bool(connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        yield held
    finally:
        try:
            if held:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        except Exception:
            # Never hand a connection that may still hold the lock back to the pool.
            log.warning("advisory unlock failed; discarding the connection")
            connection.invalidate()
        connection.close()


@contextmanager
def _local_claim(idempotency_key: str) -> Iterator[bool]:
    with _local_lock:
        held = idempotency_key not in _local_claims
        if held:
            _local_claims.add(idempotency_key)
    try:
        yield held
    finally:
        if held:
            with _local_lock:
                _local_claims.discard(idempotency_key)

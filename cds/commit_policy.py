"""Commits on the hook path do not wait for the disk flush (PostgreSQL ``synchronous_commit = off``).

Same policy as the audit ledger's appends: the transaction is atomic and ordered, only its durability
is delayed by at most a few hundred milliseconds (the WAL writer's cycle), and a crash in that window
loses the last card rows and ``jti`` entries, never corrupts anything. Waiting for one fsync per commit
was most of a hook call's latency on ordinary disks. SQLite already runs with ``synchronous=NORMAL``
in WAL mode (``integrations.store.engine``), which is the same trade.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session


def commit_without_flush_wait(session: Session) -> None:
    """Call first thing in a transaction; a no-op outside PostgreSQL."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit = off"))

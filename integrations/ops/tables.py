"""The two operational tables. Neither holds patient data: task arguments are ids, reasons are error types."""

from __future__ import annotations

import threading

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

metadata = sa.MetaData()

dead_letters = sa.Table(
    "task_dead_letters",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("task_name", sa.String(128), nullable=False),
    sa.Column("task_id", sa.String(155), nullable=False, index=True),
    sa.Column("queue", sa.String(64), nullable=False),
    # Positional arguments as sent: ids only (tasks take ids and re-fetch inside).
    sa.Column("args", sa.JSON, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("requeued_at", sa.DateTime(timezone=True)),
    sa.Column("requeued_task_id", sa.String(155)),
)

worker_heartbeats = sa.Table(
    "worker_heartbeats",
    metadata,
    # "<celery node name>/<pid>": one row per worker process.
    sa.Column("worker", sa.String(255), primary_key=True),
    sa.Column("hostname", sa.String(255), nullable=False, index=True),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("queues", sa.String(255), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
    # [{"task_id", "task_name", "started_at" (ISO), "time_limit_s"}]
    sa.Column("active", sa.JSON, nullable=False),
    sa.Column("stopped_at", sa.DateTime(timezone=True)),
)

_ready: set[str] = set()
_ready_lock = threading.Lock()


def ensure_ops_tables(engine: Engine) -> None:
    """Create the tables once per engine URL; safe when several processes race to create them."""
    key = engine.url.render_as_string(hide_password=False)
    with _ready_lock:
        if key in _ready:
            return
        try:
            metadata.create_all(engine, checkfirst=True)
        except DBAPIError:
            # Another process created them between our check and our CREATE: check again, quietly.
            metadata.create_all(engine, checkfirst=True)
        _ready.add(key)

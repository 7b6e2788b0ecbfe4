"""Worker health from heartbeats in the database: alive, consuming, and no task running past its limit.

Why the database and not Celery's remote-control `ping`: the embedded SQLite broker has no broadcast, and
"the process answers" is not enough: a worker whose pool no longer enforces limits (a child that cannot be
killed, a parent stuck) still answers. Each worker writes what it is running every few seconds and the check
compares start times with limits.
One check serves a container probe (`--host $(hostname)`) and an operator looking at the whole cluster.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from integrations.ops.tables import ensure_ops_tables, worker_heartbeats

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 10.0


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class HeartbeatWriter:
    """Writes this worker's row every `interval_s` from a daemon thread; tracks the tasks it runs.

    `active_tasks`, when given, reports the running tasks at each beat (a prefork parent reads them from its
    pool's bookkeeping, since the tasks themselves run in child processes); otherwise `task_started` and
    `task_finished` keep the list.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        node_name: str,
        queues: str,
        interval_s: float = DEFAULT_INTERVAL_S,
        active_tasks: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.engine = engine
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.worker = f"{node_name}/{self.pid}"
        self.queues = queues
        self.interval_s = interval_s
        self.started_at = datetime.now(UTC)
        self._active_tasks = active_tasks
        self._active: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def task_started(self, task_id: str, task_name: str, time_limit_s: float | None) -> None:
        with self._lock:
            self._active[task_id] = {
                "task_id": task_id,
                "task_name": task_name,
                "started_at": datetime.now(UTC).isoformat(),
                "time_limit_s": time_limit_s,
            }

    def task_finished(self, task_id: str) -> None:
        with self._lock:
            self._active.pop(task_id, None)

    def beat(self, *, stopped: bool = False) -> None:
        """Upsert this worker's row now (the thread calls it; tests and shutdown call it directly)."""
        if self._active_tasks is not None:
            active = self._active_tasks()
        else:
            with self._lock:
                active = list(self._active.values())
        now = datetime.now(UTC)
        values = {
            "hostname": self.hostname,
            "pid": self.pid,
            "queues": self.queues,
            "started_at": self.started_at,
            "beat_at": now,
            "active": active,
            "stopped_at": now if stopped else None,
        }
        with self.engine.begin() as connection:
            updated = connection.execute(
                worker_heartbeats.update().where(worker_heartbeats.c.worker == self.worker).values(**values)
            ).rowcount
            if updated == 0:
                connection.execute(worker_heartbeats.insert().values(worker=self.worker, **values))

    def start(self) -> None:
        ensure_ops_tables(self.engine)
        self.beat()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        try:
            self.beat(stopped=True)
        except SQLAlchemyError:
            log.warning("could not record worker shutdown (database unavailable)")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except SQLAlchemyError as exc:  # the database is down: the next beat tries again
                log.warning("worker heartbeat failed (%s)", type(exc).__name__)


class WorkerStatus(BaseModel):
    worker: str
    hostname: str
    queues: str
    beat_age_s: float
    active_tasks: int
    overdue_tasks: list[str]
    stopped: bool
    healthy: bool


class HealthReport(BaseModel):
    healthy: bool
    workers: list[WorkerStatus]
    problems: list[str]


def check_worker_health(
    engine: Engine,
    *,
    hostname: str | None = None,
    queue: str | None = None,
    max_beat_age_s: float = 3 * DEFAULT_INTERVAL_S,
    now: datetime | None = None,
) -> HealthReport:
    """Healthy when at least one running worker matches and every matching one is fresh and not overdue.

    Stopped workers (clean shutdown) are listed but do not count either way, and so is a worker that
    died without stopping once a newer one on the same host and queues has started (a restart).
    """
    ensure_ops_tables(engine)
    now = now or datetime.now(UTC)
    query = sa.select(worker_heartbeats)
    if hostname is not None:
        query = query.where(worker_heartbeats.c.hostname == hostname)
    with engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(query)]
    if queue is not None:
        rows = [row for row in rows if queue in str(row["queues"]).split(",")]
    statuses: list[WorkerStatus] = []
    problems: list[str] = []
    for row in sorted(rows, key=lambda r: str(r["worker"])):
        if row["stopped_at"] is None and _replaced(row, rows):
            row["stopped_at"] = row["beat_at"]
        age = (now - _aware(row["beat_at"])).total_seconds()
        overdue = []
        for task in row["active"] or []:
            limit = task.get("time_limit_s")
            started = datetime.fromisoformat(task["started_at"])
            if limit and (now - started) > timedelta(seconds=float(limit)):
                overdue.append(str(task["task_id"]))
        stopped = row["stopped_at"] is not None
        healthy = stopped or (age <= max_beat_age_s and not overdue)
        if not stopped and age > max_beat_age_s:
            problems.append(f"{row['worker']}: last heartbeat {age:.0f}s ago (limit {max_beat_age_s:.0f}s)")
        for task_id in overdue:
            problems.append(f"{row['worker']}: task {task_id} is running past its time limit")
        statuses.append(
            WorkerStatus(
                worker=str(row["worker"]),
                hostname=str(row["hostname"]),
                queues=str(row["queues"]),
                beat_age_s=round(age, 1),
                active_tasks=len(row["active"] or []),
                overdue_tasks=overdue,
                stopped=stopped,
                healthy=healthy,
            )
        )
    running = [s for s in statuses if not s.stopped]
    if not running:
        problems.append("no running worker matches" + (f" host {hostname}" if hostname else ""))
    return HealthReport(healthy=not problems, workers=statuses, problems=problems)


def _replaced(row: dict[str, Any], rows: list[dict[str, Any]]) -> bool:
    return any(
        other["worker"] != row["worker"]
        and other["hostname"] == row["hostname"]
        and other["queues"] == row["queues"]
        and _aware(other["started_at"]) > _aware(row["beat_at"])
        for other in rows
    )

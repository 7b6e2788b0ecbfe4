"""Time limits: from VERITRACE_* settings to the limits the worker applies to each task, and the heartbeat
that reports what the pool children run (the tasks themselves run in other processes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine

from cds.settings import Settings
from integrations.celery_app import (
    ANALYSE_TASK,
    SR_EXPORT_TASK,
    WRITEBACK_TASK,
    TaskTimeLimits,
    make_celery,
)
from integrations.ops.health import HeartbeatWriter, check_worker_health
from integrations.tasks import worker_signals


def test_settings_become_per_task_soft_and_hard_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERITRACE_ANALYSIS_TIME_LIMIT_S", "600")
    monkeypatch.setenv("VERITRACE_WRITEBACK_TIME_LIMIT_S", "90")
    monkeypatch.setenv("VERITRACE_TASK_KILL_GRACE_S", "15")
    app = make_celery("memory://", Settings().task_time_limits())
    import integrations.tasks.analyse  # noqa: F401  (registers the shared tasks)

    app.finalize()
    limits = {
        name: (app.tasks[name].soft_time_limit, app.tasks[name].time_limit)
        for name in (ANALYSE_TASK, WRITEBACK_TASK, SR_EXPORT_TASK)
    }
    assert limits == {ANALYSE_TASK: (600, 615), WRITEBACK_TASK: (90, 105), SR_EXPORT_TASK: (90, 105)}
    # Any other task gets the analysis limits.
    assert (app.conf.task_soft_time_limit, app.conf.task_time_limit) == (600, 615)


def test_defaults_stay_under_rabbitmqs_consumer_timeout() -> None:
    limits = TaskTimeLimits()
    hard = {name: values["time_limit"] for name, values in limits.annotations().items()}
    assert max(hard.values()) < 30 * 60


@pytest.mark.parametrize("field", ["analysis_s", "writeback_s", "kill_grace_s"])
def test_a_limit_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TaskTimeLimits(**{field: 0})


def test_a_bad_setting_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERITRACE_TASK_KILL_GRACE_S", "-1")
    with pytest.raises(ValidationError, match="task_kill_grace_s"):
        Settings()


def _request(task_id: str, started: datetime | None, time_limit: float | None) -> Any:
    return SimpleNamespace(
        id=task_id,
        name=ANALYSE_TASK,
        time_start=started.timestamp() if started else None,
        task=SimpleNamespace(time_limit=time_limit),
    )


def test_running_tasks_come_from_the_parents_pool_records(monkeypatch: pytest.MonkeyPatch) -> None:
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    requests = [_request("t-1", started, 1500), _request("t-queued", None, 1500)]
    monkeypatch.setattr(worker_signals.worker_state, "active_requests", requests)
    app = SimpleNamespace(conf=SimpleNamespace(task_time_limit=99))
    assert worker_signals.running_tasks(app) == [
        {
            "task_id": "t-1",
            "task_name": ANALYSE_TASK,
            "started_at": started.isoformat(),
            "time_limit_s": 1500.0,
        }
    ]


def test_heartbeat_reports_the_tasks_its_source_returns(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'ops.db'}")
    running: list[dict[str, Any]] = []
    writer = HeartbeatWriter(
        engine, node_name="veritrace-gpu@node1", queues="gpu", active_tasks=lambda: running
    )
    writer.start()
    try:
        started = datetime.now(UTC)
        running.append(
            {
                "task_id": "t-1",
                "task_name": ANALYSE_TASK,
                "started_at": started.isoformat(),
                "time_limit_s": 60,
            }
        )
        writer.beat()
        assert check_worker_health(engine).workers[0].active_tasks == 1
        late = check_worker_health(engine, now=started + timedelta(seconds=61), max_beat_age_s=600)
        assert late.workers[0].overdue_tasks == ["t-1"]
        running.clear()
        writer.beat()
        assert check_worker_health(engine).healthy
    finally:
        writer.stop()

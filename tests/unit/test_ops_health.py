"""Worker health from heartbeats: fresh, stale, overdue task, clean stop, restart replacing a dead worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from integrations.ops.health import HeartbeatWriter, check_worker_health


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return create_engine(f"sqlite:///{tmp_path / 'ops.db'}")


def test_fresh_worker_is_healthy_stale_is_not(engine: Engine) -> None:
    writer = HeartbeatWriter(engine, node_name="veritrace-gpu@node1", queues="gpu")
    writer.start()
    try:
        report = check_worker_health(engine, queue="gpu")
        assert report.healthy and [w.worker for w in report.workers] == [writer.worker]
        later = datetime.now(UTC) + timedelta(seconds=120)
        stale = check_worker_health(engine, queue="gpu", max_beat_age_s=30, now=later)
        assert not stale.healthy and "last heartbeat" in stale.problems[0]
        assert check_worker_health(engine, queue="io").problems == ["no running worker matches"]
    finally:
        writer.stop()


def test_task_past_its_time_limit_makes_the_worker_unhealthy(engine: Engine) -> None:
    writer = HeartbeatWriter(engine, node_name="veritrace-gpu@node1", queues="gpu")
    writer.start()
    try:
        writer.task_started("task-1", "veritrace.analyse_study", time_limit_s=60)
        writer.beat()
        assert check_worker_health(engine).healthy
        report = check_worker_health(
            engine, now=datetime.now(UTC) + timedelta(seconds=61), max_beat_age_s=600
        )
        assert not report.healthy and report.workers[0].overdue_tasks == ["task-1"]
        writer.task_finished("task-1")
        writer.beat()
        assert check_worker_health(engine).healthy
    finally:
        writer.stop()


def test_clean_stop_and_restart_after_a_kill(engine: Engine) -> None:
    stopped = HeartbeatWriter(engine, node_name="veritrace-io@node1", queues="io")
    stopped.start()
    stopped.stop()
    assert check_worker_health(engine).problems == ["no running worker matches"]

    killed = HeartbeatWriter(engine, node_name="veritrace-gpu@node1", queues="gpu")
    killed.worker = "veritrace-gpu@node1/111"  # another process id: a worker that died without a goodbye
    killed.beat()
    later = datetime.now(UTC) + timedelta(seconds=300)
    assert not check_worker_health(engine, now=later).healthy
    restarted = HeartbeatWriter(engine, node_name="veritrace-gpu@node1", queues="gpu")
    restarted.beat()  # started after the killed worker's last heartbeat: it replaces it
    report = check_worker_health(engine)
    assert report.healthy, report.problems
    assert {w.worker: w.stopped for w in report.workers}[killed.worker] is True


def test_interval_must_be_positive(engine: Engine) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        HeartbeatWriter(engine, node_name="n", queues="gpu", interval_s=0)

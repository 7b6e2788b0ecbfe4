"""kill -9 the worker in the middle of an analysis: after a restart the analysis completes exactly once.

Why it holds: the message is acked late (only after the task returns), so RabbitMQ redelivers it when the
killed worker's connection drops; the advisory-lock claim died with the worker's database connection, so the
new worker may run it; the report is unique per analysis.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cds.demo_study import build_demo_ct_study
from integrations.store.models import Analysis
from model.cpu_threads import available_cores
from tests.fault.harness import Deployment, storescu, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


def _status(deployment: Deployment) -> tuple[str, int] | None:
    with deployment.session() as session:
        analysis = session.scalar(select(Analysis))
        return (analysis.status, analysis.attempts) if analysis is not None else None


def test_killed_worker_analysis_completes_once(deployment: Deployment) -> None:
    settings = deployment.settings()
    deployment.spawn("dicom", "dicom")
    deployment.spawn("worker-1", "worker", "-Q", "gpu,io")
    deployment.wait_dicom(settings.dicom_port)
    deployment.wait_log("worker-1", "ready.")

    paths = build_demo_ct_study(deployment.home / "incoming", patient_id="vt-fault-kill", slices=3)
    sent = storescu(settings.dicom_port, paths)
    assert sent.returncode == 0, sent.stderr

    # Kill the worker the moment the analysis is running and its start is audited (it is then reading
    # the study and running the model).
    wait_until(
        lambda: (
            (_status(deployment) or ("", 0))[0] == "running"
            and "analysis.started" in deployment.ledger_kinds()
        ),
        timeout_s=60,
        interval_s=0.02,
        what="analysis running",
    )
    deployment.kill("worker-1")
    status, attempts = _status(deployment) or ("", 0)
    assert (status, attempts) == ("running", 1), "the analysis finished before the kill; test proves nothing"
    assert deployment.report_count() == 0

    # The replacement is told to use one CPU thread for the model (a worker sharing a small box).
    deployment.env["VERITRACE_MODEL_CPU_THREADS"] = "1"
    deployment.spawn("worker-2", "worker", "-Q", "gpu,io")
    wait_until(
        lambda: (_status(deployment) or ("", 0))[0] == "completed",
        timeout_s=180,
        what="analysis completed after restart",
    )
    analysis = deployment.analyses()[0]
    assert analysis.attempts == 2
    assert deployment.report_count(analysis.id) == 1
    assert deployment.report_count() == 1
    kinds = deployment.ledger_kinds()
    assert kinds.count("analysis.started") == 2  # the killed run and the rerun, both audited
    assert kinds.count("report.drafted") == 1
    assert kinds.count("analysis.completed") == 1
    assert deployment.ledger().verify().ok
    # worker-1 (one pool child, nothing configured) used every core; worker-2 the one thread it was given.
    assert f"{available_cores()} CPU threads" in deployment.log_tail("worker-1", chars=200_000)
    assert "1 CPU threads" in deployment.log_tail("worker-2", chars=200_000)

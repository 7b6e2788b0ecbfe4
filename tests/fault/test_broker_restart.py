"""Restart RabbitMQ with analyses queued and no worker running: none is lost.

The queues are durable and Celery publishes persistent messages with publisher confirms, so what the
DICOM gateway had queued is on the broker's disk before `send_task` returns and survives `stop_app`.
This is the machine's shared RabbitMQ: the outage is a few seconds and the broker is restarted in
`finally` whatever happens.
"""

from __future__ import annotations

import subprocess

import pytest

from cds.demo_study import build_demo_ct_study
from integrations.celery_app import GPU_QUEUE, make_celery
from integrations.ops.queue_depth import queue_depths
from tests.fault.harness import Deployment, storescu, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]
STUDIES = 3


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def test_queued_analyses_survive_broker_restart(deployment: Deployment) -> None:
    settings = deployment.settings()
    deployment.spawn("dicom", "dicom")
    deployment.wait_dicom(settings.dicom_port)
    for index in range(STUDIES):
        paths = build_demo_ct_study(
            deployment.home / f"incoming-{index}", patient_id=f"vt-fault-mq-{index}", slices=2
        )
        sent = storescu(settings.dicom_port, paths)
        assert sent.returncode == 0, sent.stderr

    app = make_celery(settings.resolved_broker_url)
    wait_until(
        lambda: queue_depths(app)[GPU_QUEUE] == STUDIES, timeout_s=60, what=f"{STUDIES} messages on gpu"
    )
    deployment.stop("dicom")  # nothing may re-send them after the restart: what survives is the broker's
    try:
        _rabbitmqctl("stop_app")
    finally:
        _rabbitmqctl("start_app")
        _rabbitmqctl("await_startup")
    assert queue_depths(app)[GPU_QUEUE] == STUDIES

    deployment.spawn("worker", "worker", "-Q", "gpu,io")
    wait_until(
        lambda: [a.status for a in deployment.analyses()] == ["completed"] * STUDIES,
        timeout_s=240,
        what="every analysis completed",
    )
    for analysis in deployment.analyses():
        assert deployment.report_count(analysis.id) == 1
    assert queue_depths(app)[GPU_QUEUE] == 0

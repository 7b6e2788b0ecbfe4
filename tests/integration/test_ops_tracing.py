"""One trace across processes: a span in the publisher, the publish span, the worker's task span.

The publisher is this test process (in-memory exporter); the worker is `veritrace worker -Q io` in its own
process with spans written to a JSON-lines file, on RabbitMQ. The `traceparent` travels in the message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry import trace

from integrations.celery_app import WRITEBACK_TASK, make_celery
from tests.fault.harness import Deployment, wait_until
from tests.tracing_support import span_exporter

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

WORKER_LAUNCHER = """
import sys
from pathlib import Path
from cds.observability.instrument import configure_process_observability
configure_process_observability("veritrace-worker", json_logs=True, trace_file=Path(sys.argv[1]))
from cds.cli import app
app(["worker", "-Q", "io"])
"""


def test_worker_span_is_a_child_of_the_publishing_span(
    tmp_path: Path, postgres_url: str, rabbitmq_url: str
) -> None:
    exporter = span_exporter()
    deployment = Deployment.create(tmp_path / "home", database_url=postgres_url, broker_url=rabbitmq_url)
    trace_file = tmp_path / "worker-spans.jsonl"
    log_path = tmp_path / "worker.log"
    assert deployment.run_cli("db", "upgrade").returncode == 0
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER_LAUNCHER, str(trace_file)],
            env={**os.environ, **deployment.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "ready." in log_path.read_text(errors="replace"), timeout_s=90, what="worker")
        app = make_celery(deployment.settings().resolved_broker_url)
        with trace.get_tracer("test").start_as_current_span("hook call") as root:
            app.send_task(WRITEBACK_TASK, args=["no-such-report"], queue="io", routing_key="io")
        run = wait_until(
            lambda: [
                span
                for line in (trace_file.read_text().splitlines() if trace_file.exists() else [])
                if (span := json.loads(line))["name"] == f"run {WRITEBACK_TASK}"
            ],
            timeout_s=60,
            what="the worker's span",
        )[0]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        deployment.stop_all()

    publish = next(s for s in exporter.get_finished_spans() if s.name == f"publish {WRITEBACK_TASK}")
    root_context = root.get_span_context()
    assert publish.parent is not None and publish.parent.span_id == root_context.span_id
    assert run["trace_id"] == format(root_context.trace_id, "032x")
    assert run["parent_span_id"] == format(publish.context.span_id, "016x")
    assert run["kind"] == "CONSUMER" and run["service"] == "veritrace-worker"
    assert run["attributes"]["celery.state"] == "SUCCESS"
    # The worker's logs were JSON lines (the launcher switched them on).
    json_lines = [line for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert json_lines and all(json.loads(line)["service"] == "veritrace-worker" for line in json_lines)

"""deploy/container/healthcheck.py against real servers: an HTTP server, a pynetdicom SCP, RabbitMQ with a
real Celery worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.conftest import free_port
from tests.unit.test_deploy_secrets import load_deploy_module

REPO = Path(__file__).resolve().parents[2]
hc = load_deploy_module("deploy/container/healthcheck.py")


@pytest.mark.parametrize(
    ("argv", "kind", "queues"),
    [
        (["tini", "--", "veritrace", "api"], "api", "gpu,io"),
        (["/usr/bin/tini", "--", "veritrace", "dicom"], "dicom", "gpu,io"),
        (
            ["/opt/venv/bin/python", "/opt/venv/bin/veritrace", "worker", "-Q", "gpu", "-c", "1"],
            "worker",
            "gpu",
        ),
        (["tini", "--", "veritrace", "worker", "--queues=io"], "worker", "io"),
        (["tini", "--", "veritrace", "worker"], "worker", "gpu,io"),
        (["python", "-m", "cds.cli", "serve"], "serve", "gpu,io"),
        (["tini", "--", "veritrace", "db", "upgrade"], "one-shot", "gpu,io"),
    ],
)
def test_detects_the_process_kind_from_pid1_argv(argv: list[str], kind: str, queues: str) -> None:
    info = hc.detect_process(argv)
    assert (info.kind.value, info.queues) == (kind, queues)


def test_a_foreign_pid1_is_an_error() -> None:
    with pytest.raises(ValueError, match="no veritrace command"):
        hc.detect_process(["nginx", "-g", "daemon off;"])


def test_worker_node_name_matches_the_cli() -> None:
    cli = (REPO / "cds" / "cli.py").read_text()
    assert "f\"veritrace-{queues.replace(',', '-')}@%h\"" in cli, "`veritrace worker` changed its node name"
    assert hc.worker_node_name("gpu,io", "node7") == "veritrace-gpu-io@node7"


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def http_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    _Health.status = 200


def test_api_probe_healthy_on_200(http_server: ThreadingHTTPServer) -> None:
    result = hc.probe_api(http_server.server_address[1])
    assert result.healthy and "200" in result.detail


def test_api_probe_unhealthy_on_503(http_server: ThreadingHTTPServer) -> None:
    _Health.status = 503
    result = hc.probe_api(http_server.server_address[1])
    assert not result.healthy and "503" in result.detail


def test_api_probe_unhealthy_when_nothing_listens() -> None:
    result = hc.probe_api(free_port(), timeout_s=2)
    assert not result.healthy and "no answer" in result.detail


@pytest.fixture
def echo_scp() -> Iterator[tuple[int, AE]]:
    ae = AE(ae_title="VERITRACE")
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_ECHO, lambda e: 0x0000)]
    )
    assert server is not None
    yield port, ae
    server.shutdown()


def test_dicom_probe_healthy_after_c_echo(echo_scp: tuple[int, AE]) -> None:
    port, _ = echo_scp
    result = hc.probe_dicom(port, "VERITRACE")
    assert result.healthy and "C-ECHO" in result.detail


def test_dicom_probe_counts_a_rejection_as_alive(echo_scp: tuple[int, AE]) -> None:
    port, _ = echo_scp
    result = hc.probe_dicom(port, "SOMEONE-ELSE")
    assert result.healthy and "rejected" in result.detail


def test_dicom_probe_unhealthy_when_nothing_listens() -> None:
    result = hc.probe_dicom(free_port(), "VERITRACE", timeout_s=2)
    assert not result.healthy


def test_serve_needs_both_api_and_dicom(http_server: ThreadingHTTPServer, echo_scp: tuple[int, AE]) -> None:
    env = {"VERITRACE_API_PORT": str(http_server.server_address[1]), "VERITRACE_DICOM_PORT": str(echo_scp[0])}
    serve = hc.ProcessInfo(hc.ProcessKind.SERVE)
    assert hc.probe(serve, env, "host").healthy
    env["VERITRACE_DICOM_PORT"] = str(free_port())
    result = hc.probe(serve, env, "host")
    assert not result.healthy and "api: /healthz 200" in result.detail


def test_embedded_broker_cannot_be_pinged_and_says_so() -> None:
    result = hc.probe_worker("sqla+sqlite:////tmp/broker.db", "gpu", "host")
    assert result.healthy and "embedded broker" in result.detail


@pytest.fixture
def celery_worker(rabbitmq_url: str) -> Iterator[tuple[str, str]]:
    """A real Celery worker on the real RabbitMQ, named the way `veritrace worker -Q io` names itself."""
    hostname = f"probe-{os.getpid()}"
    node = hc.worker_node_name("io", hostname)
    command = [sys.executable, "-m", "celery", "-b", rabbitmq_url, "worker", "-n", node, "-Q", "io"]
    command += ["--pool", "solo", "--without-gossip", "--without-mingle", "--loglevel", "WARNING"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if hc.probe_worker(rabbitmq_url, "io", hostname, timeout_s=1).healthy:
                break
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        else:
            pytest.fail("the Celery worker never answered")
        yield rabbitmq_url, hostname
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.mark.rabbitmq
def test_worker_probe_pings_its_own_node(celery_worker: tuple[str, str]) -> None:
    url, hostname = celery_worker
    assert hc.probe_worker(url, "io", hostname).healthy
    other = hc.probe_worker(url, "gpu", hostname, timeout_s=1)
    assert not other.healthy and "did not answer" in other.detail


def test_worker_probe_unhealthy_without_a_broker_and_hides_the_url() -> None:
    url = f"amqp://veritrace:s3cret-value@127.0.0.1:{free_port()}/veritrace"
    result = hc.probe_worker(url, "io", socket.gethostname(), timeout_s=2)
    assert not result.healthy and "broker unreachable" in result.detail
    assert "s3cret" not in result.detail


def test_main_exit_codes(http_server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("VERITRACE_API_PORT", str(http_server.server_address[1]))
    assert hc.main(["--kind", "api"]) == 0
    assert capsys.readouterr().out.startswith("healthy: api")
    _Health.status = 503
    assert hc.main(["--kind", "api"]) == 1
    assert capsys.readouterr().out.startswith("unhealthy: api")

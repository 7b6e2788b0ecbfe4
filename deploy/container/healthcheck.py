"""Container health probe for every Veritrace process kind (Docker HEALTHCHECK, Kubernetes exec probes).

One image runs `api`, `dicom`, `worker -Q ...`, `serve` and `db upgrade`, so one probe has to work for
all of them. It reads the command line of PID 1 (``tini -- veritrace <command> ...``) to learn which
process this container runs, then asks that process, over its own protocol, whether it answers:

- ``api``: ``GET /healthz`` on ``VERITRACE_API_PORT`` must return 200 (the route checks the database);
- ``dicom``: a DICOM association to the SCP's own AE title and a C-ECHO. A *rejected* association also
  counts as alive: the SCP parsed our request and answered, which is what liveness means, and a strict
  ``VERITRACE_DICOM_ALLOWED_CALLING_AETS`` would otherwise make every probe fail;
- ``worker``: a Celery ``ping`` addressed to this worker's node name (``veritrace-<queues>@<hostname>``,
  as ``veritrace worker`` names it) must be answered. The embedded SQLite broker has no broadcast
  support, so there the probe can only say that the process exists;
- ``serve``: the API and the DICOM probes, since both run in that process;
- anything else (``db upgrade``, ``audit ...``) is a one-shot command: healthy while it runs.

It prints one line (never request or patient data) and exits 0 when healthy, 1 when not. Run with
``--kind`` to probe a given kind instead of reading PID 1 (useful on a bare host).
"""

from __future__ import annotations

import argparse
import enum
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROBE_TIMEOUT_S = 5.0
HEALTHCHECK_CALLING_AE = "VT-HEALTHCHECK"
DEFAULT_API_PORT = 8080
DEFAULT_DICOM_PORT = 11112
DEFAULT_DICOM_AE_TITLE = "VERITRACE"
DEFAULT_WORKER_QUEUES = "gpu,io"  # the default of `veritrace worker -Q`


class ProcessKind(enum.Enum):
    API = "api"
    DICOM = "dicom"
    WORKER = "worker"
    SERVE = "serve"
    ONE_SHOT = "one-shot"


@dataclass(frozen=True)
class ProcessInfo:
    """What PID 1 runs: its kind and, for a worker, the queues it consumes."""

    kind: ProcessKind
    queues: str = DEFAULT_WORKER_QUEUES


@dataclass(frozen=True)
class ProbeResult:
    healthy: bool
    detail: str


def _is_veritrace_launcher(token: str) -> bool:
    return Path(token).name == "veritrace" or token == "cds.cli"


def detect_process(argv: Sequence[str]) -> ProcessInfo:
    """The Veritrace command in ``argv`` (PID 1's command line). Raises ValueError when there is none."""
    for index, token in enumerate(argv):
        if not _is_veritrace_launcher(token):
            continue
        rest = list(argv[index + 1 :])
        command = rest[0] if rest else ""
        if command == "worker":
            return ProcessInfo(ProcessKind.WORKER, _worker_queues(rest[1:]))
        if command in (ProcessKind.API.value, ProcessKind.DICOM.value, ProcessKind.SERVE.value):
            return ProcessInfo(ProcessKind(command))
        return ProcessInfo(ProcessKind.ONE_SHOT)
    raise ValueError(f"no veritrace command in PID 1's command line ({len(argv)} arguments)")


def _worker_queues(options: Sequence[str]) -> str:
    for index, option in enumerate(options):
        if option in ("-Q", "--queues") and index + 1 < len(options):
            return options[index + 1]
        if option.startswith("--queues="):
            return option.split("=", 1)[1]
    return DEFAULT_WORKER_QUEUES


def worker_node_name(queues: str, hostname: str) -> str:
    """The node name `veritrace worker` gives Celery (see cds/cli.py); a ping must be addressed to it."""
    return f"veritrace-{queues.replace(',', '-')}@{hostname}"


def read_process_argv(pid: int = 1) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def probe_api(port: int, timeout_s: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Healthy when ``GET /healthz`` answers 200 (503 means the database is unreachable)."""
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, urllib.error.URLError) as exc:
        return ProbeResult(False, f"api: no answer on port {port} ({type(exc).__name__})")
    if status != 200:
        return ProbeResult(False, f"api: /healthz answered {status}")
    return ProbeResult(True, "api: /healthz 200")


def probe_dicom(port: int, ae_title: str, timeout_s: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Healthy when the SCP accepts an association and answers C-ECHO, or rejects the association."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=HEALTHCHECK_CALLING_AE)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if assoc.is_rejected:
        return ProbeResult(True, f"dicom: {ae_title} answered (association rejected)")
    if not assoc.is_established:
        return ProbeResult(False, f"dicom: no association with {ae_title} on port {port}")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code != 0x0000:
        return ProbeResult(False, f"dicom: C-ECHO status {code!r}")
    return ProbeResult(True, f"dicom: C-ECHO to {ae_title} succeeded")


def probe_worker(
    broker_url: str | None, queues: str, hostname: str, timeout_s: float = PROBE_TIMEOUT_S
) -> ProbeResult:
    """Healthy when this worker's node answers a Celery ping through the broker."""
    if broker_url is None or broker_url.startswith("sqla+"):
        return ProbeResult(True, "worker: embedded broker has no remote control; process is running")
    from celery import Celery

    node = worker_node_name(queues, hostname)
    app = Celery("veritrace-healthcheck", broker=broker_url)
    app.conf.broker_connection_timeout = timeout_s
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    try:
        replies = app.control.ping(destination=[node], timeout=timeout_s, limit=1)
    except Exception as exc:  # any broker failure is "unhealthy", reported by type only (URLs hold secrets)
        return ProbeResult(False, f"worker: broker unreachable ({type(exc).__name__})")
    finally:
        app.close()
    if not any(node in reply for reply in replies):
        return ProbeResult(False, f"worker: {node} did not answer ping within {timeout_s:.0f}s")
    return ProbeResult(True, f"worker: {node} answered ping")


def probe(info: ProcessInfo, environ: Mapping[str, str], hostname: str) -> ProbeResult:
    """Run the probes that fit ``info``, configured from the same VERITRACE_* variables as the process."""
    api_port = int(environ.get("VERITRACE_API_PORT", DEFAULT_API_PORT))
    dicom_port = int(environ.get("VERITRACE_DICOM_PORT", DEFAULT_DICOM_PORT))
    ae_title = environ.get("VERITRACE_DICOM_AE_TITLE", DEFAULT_DICOM_AE_TITLE)
    if info.kind is ProcessKind.API:
        return probe_api(api_port)
    if info.kind is ProcessKind.DICOM:
        return probe_dicom(dicom_port, ae_title)
    if info.kind is ProcessKind.WORKER:
        return probe_worker(environ.get("VERITRACE_BROKER_URL"), info.queues, hostname)
    if info.kind is ProcessKind.SERVE:
        results = [probe_api(api_port), probe_dicom(dicom_port, ae_title)]
        return ProbeResult(all(r.healthy for r in results), "; ".join(r.detail for r in results))
    return ProbeResult(True, "one-shot command: running")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kind", choices=[k.value for k in ProcessKind if k is not ProcessKind.ONE_SHOT])
    parser.add_argument("--queues", default=DEFAULT_WORKER_QUEUES, help="with --kind worker")
    args = parser.parse_args(argv)
    try:
        if args.kind:
            info = ProcessInfo(ProcessKind(args.kind), args.queues)
        else:
            info = detect_process(read_process_argv())
    except (OSError, ValueError) as exc:
        print(f"unhealthy: cannot tell which process to probe: {exc}")
        return 1
    result = probe(info, os.environ, socket.gethostname())
    print(("healthy: " if result.healthy else "unhealthy: ") + result.detail)
    return 0 if result.healthy else 1


if __name__ == "__main__":
    sys.exit(main())

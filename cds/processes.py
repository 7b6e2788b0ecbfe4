"""Long-running pieces a command starts: the API server, the DICOM gateway and a Celery worker.

`serve` and `demo` run all three on one machine; the scale-out commands run one each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import uvicorn

from cds.composition import Components


def build_api_server(components: Components) -> uvicorn.Server:
    from cds.app import create_app
    from cds.observability.instrument import instrument_api
    from integrations.ops.queue_depth import queue_depths

    settings = components.settings
    app = create_app(settings, session_factory=components.session_factory, ledger=components.ledger)
    instrument_api(
        app,
        engine=components.engine,
        ledger_size=components.ledger.size,
        queue_depths=lambda: queue_depths(components.celery),
    )
    config = uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, log_level="warning", access_log=False
    )
    return uvicorn.Server(config)


@contextmanager
def api_in_background(components: Components) -> Iterator[uvicorn.Server]:
    server = build_api_server(components)
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            threading.Event().wait(0.05)
        if not server.started:
            raise RuntimeError(f"API server failed to start on port {components.settings.api_port}")
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def dicom_gateway(components: Components) -> Iterator[None]:
    """Storage SCP plus the stable-study tracker that queues each study once it goes quiet."""
    from integrations.dicom.scp import StorageScp
    from integrations.dicom.stability import StableStudyTracker

    config = components.settings.dicom_config()
    scp = StorageScp(config, components.session_factory, components.ledger)
    tracker = StableStudyTracker(
        components.session_factory,
        components.ledger,
        config.stable_age_s,
        components.enqueue_analysis,
        stable_age_by_calling_aet=config.stable_age_by_calling_aet,
        routing=config.routing,
        held_studies=scp.indexer.held_studies,
    )
    tracker.requeue_pending()
    stop = threading.Event()
    threads = [threading.Thread(target=tracker.run, args=(stop,), name="stable-study-tracker", daemon=True)]
    retention = components.settings.retention_config()
    if retention.enabled:
        # The dicom process owns the spool's writes, runs on every install (`serve` included) and has no
        # scheduler to depend on; runs are exclusive across processes, so N dicom processes are fine.
        from integrations.ops.retention import run_periodically

        retention_args = (components.engine, scp.spool, components.ledger, retention, stop)
        threads.append(
            threading.Thread(target=run_periodically, args=retention_args, name="retention", daemon=True)
        )
    scp.start()
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        scp.stop()
        for thread in threads:
            thread.join(timeout=10)


@contextmanager
def worker_subprocess(
    queues: str = "gpu,io", log_path: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A separate worker process (same environment), so the model never shares the API's interpreter."""
    command = [sys.executable, "-m", "cds.cli", "worker", "-Q", queues]
    with ExitStack() as stack:
        output = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            output = stack.enter_context(log_path.open("ab"))
        process = subprocess.Popen(command, env=dict(os.environ), stdout=output, stderr=output)
        try:
            yield process
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

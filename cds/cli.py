"""`veritrace`: one CLI for every process kind. It is the composition root; see cds/composition.py."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated

import typer

from cds.composition import Components
from cds.settings import Settings

app = typer.Typer(help="Veritrace: CDS Hooks + DICOM + a tool-grounded VLM with a verifiable audit log.")
db_app = typer.Typer(help="Database schema.")
app.add_typer(db_app, name="db")


def _components(service: str = "veritrace-cli") -> Components:
    """Settings, logging and tracing for one process; JSON logs (PHI-filtered) when VERITRACE_LOG_JSON."""
    from cds.observability.instrument import configure_process_observability

    settings = Settings()
    if not settings.log_json:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_process_observability(service, json_logs=settings.log_json, trace_file=settings.trace_file)
    return Components(settings)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database (store and audit ledger). Safe to run repeatedly."""
    components = _components()
    components.prepare_storage()
    typer.echo(f"database at head: {components.engine.url.render_as_string(hide_password=True)}")


@app.command()
def api() -> None:
    """CDS Hooks, audit API and STOW-RS: run N of these behind a load balancer."""
    from cds.processes import build_api_server

    components = _components("veritrace-api")
    components.prepare_storage()
    build_api_server(components).run()


@app.command()
def dicom() -> None:
    """Storage SCP and stable-study assembly."""
    from cds.processes import dicom_gateway

    components = _components("veritrace-dicom")
    components.prepare_storage()
    with dicom_gateway(components):
        settings = components.settings
        typer.echo(
            f"DICOM SCP {settings.dicom_ae_title} listening on {settings.dicom_host}:{settings.dicom_port}"
        )
        _wait_for_signal()


@app.command()
def worker(
    queues: Annotated[str, typer.Option("-Q", "--queues", help="Comma-separated: gpu, io")] = "gpu,io",
    concurrency: Annotated[int, typer.Option("-c", "--concurrency")] = 1,
) -> None:
    """A Celery worker on the prefork pool: `-c` child processes that live across tasks (on `gpu` each loads
    the model once, when it starts) and that the time limits can interrupt and replace."""
    components = _components("veritrace-worker")
    components.prepare_storage()
    components.install_worker_runtime()
    # Read back in each pool child (model CPU threads are shared out among the children).
    components.celery.conf.worker_concurrency = concurrency
    components.celery.worker_main(
        [
            "worker",
            "-Q",
            queues,
            "--pool",
            "prefork",
            "-c",
            str(concurrency),
            "-n",
            f"veritrace-{queues.replace(',', '-')}@%h",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command()
def serve() -> None:
    """Everything on one machine: API, DICOM SCP and one worker (SQLite + embedded broker by default)."""
    from cds.demo_model import ensure_demo_model
    from cds.processes import api_in_background, dicom_gateway, worker_subprocess

    components = _components("veritrace-serve")
    components.prepare_storage()
    ensure_demo_model(components.settings)
    settings = components.settings
    with worker_subprocess(), dicom_gateway(components), api_in_background(components):
        typer.echo(
            f"Veritrace serving: CDS Hooks http://{settings.api_host}:{settings.api_port}/cds-services, "
            f"DICOM {settings.dicom_ae_title}@{settings.dicom_host}:{settings.dicom_port}"
        )
        _wait_for_signal()


@app.command()
def demo(
    keep_running: Annotated[bool, typer.Option("--keep-running", help="Leave the services up")] = False,
) -> None:
    """Run the whole path once: synthetic patients, a CT study over DICOM, the draft, the card, the trace."""
    from cds.demo import run_demo

    raise typer.Exit(run_demo(Settings(), keep_running=keep_running))


def _mount_subcommands() -> None:
    from audit import Ledger
    from audit.cli import build_audit_cli
    from cds.data_protection_cli import build_retention_cli, build_spool_cli
    from cds.ops_cli import build_tasks_cli
    from cds.review_cli import review_app
    from model.cli import build_model_cli

    def open_ledger() -> Ledger:
        components = _components()
        components.prepare_storage()
        return components.ledger

    app.add_typer(build_audit_cli(open_ledger, lambda: Settings().ledger_config()), name="audit")
    app.add_typer(build_model_cli(), name="model")
    app.add_typer(review_app, name="review")
    app.add_typer(build_tasks_cli(_components), name="tasks")
    app.add_typer(build_spool_cli(Settings), name="spool")
    app.add_typer(build_retention_cli(_components), name="retention")


_mount_subcommands()

if __name__ == "__main__":
    app()

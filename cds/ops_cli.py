"""`veritrace tasks …`: dead letters, requeue, worker health and queue depth, for operators and probes.

Built by `build_tasks_cli(components_factory)` so the composition root (`cds/cli.py`) decides how the
objects are made; every command reads the same database and broker as the processes it inspects.
Exit codes: 0 fine, 1 unhealthy / nothing to requeue, 2 bad input.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from typing import Annotated

import typer

from cds.composition import Components
from integrations.ops.dead_letters import (
    AlreadyRequeued,
    DeadLetterNotFound,
    list_dead_letters,
    peek_broker_dead_letters,
)
from integrations.ops.health import check_worker_health
from integrations.ops.queue_depth import BrokerUnavailable, queue_depths
from integrations.tasks.requeue import requeue_task


def build_tasks_cli(components_factory: Callable[[], Components]) -> typer.Typer:
    tasks_app = typer.Typer(help="Celery tasks: dead letters, requeue, worker health, queue depth.")

    @tasks_app.command("dead-letters")
    def dead_letters_command(
        include_requeued: Annotated[
            bool, typer.Option("--all", help="Also list dead letters already requeued")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    ) -> None:
        """Tasks that gave up: the database record (every broker) and RabbitMQ's dead-letter queues."""
        components = components_factory()
        records = list_dead_letters(components.engine, include_requeued=include_requeued)
        broker = peek_broker_dead_letters(components.celery)
        recorded_ids = {record.task_id for record in records}
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "dead_letters": [record.model_dump(mode="json") for record in records],
                        "broker_only": [
                            letter.model_dump(mode="json")
                            for letter in broker
                            if letter.task_id not in recorded_ids
                        ],
                        "broker_total": len(broker),
                    },
                    indent=2,
                )
            )
            return
        if not records and not broker:
            typer.echo("no dead letters")
            return
        for record in records:
            state = f"requeued {record.requeued_at:%Y-%m-%d %H:%M:%S}" if record.requeued_at else "dead"
            typer.echo(
                f"{record.id[:8]}  {record.failed_at:%Y-%m-%d %H:%M:%S}  {record.queue:<4} "
                f"{record.task_name} {record.args}  attempts={record.attempts}  {state}\n"
                f"          reason: {record.reason}"
            )
        unrecorded = [letter for letter in broker if letter.task_id not in recorded_ids]
        for letter in unrecorded:
            typer.echo(
                f"(broker)  {letter.dead_queue:<8} {letter.task_name} {letter.args} "
                f"from={letter.original_queue} why={letter.death_reason} task_id={letter.task_id}"
            )
        typer.echo(f"{len(records)} recorded, {len(broker)} in RabbitMQ dead-letter queues")

    @tasks_app.command("requeue")
    def requeue_command(
        dead_letter_id: Annotated[str, typer.Argument(help="Id or unique prefix (>= 6 chars) from the list")],
        operator: Annotated[
            str | None, typer.Option(help="Who requeues (audited); defaults to the OS user")
        ] = None,
    ) -> None:
        """Send a dead-lettered task again with its original arguments; audited in the ledger."""
        components = components_factory()
        components.prepare_storage()
        try:
            requeued = requeue_task(
                app=components.celery,
                session_factory=components.session_factory,
                ledger=components.ledger,
                dead_letter_id=dead_letter_id,
                operator=operator or getpass.getuser(),
            )
        except DeadLetterNotFound as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        except AlreadyRequeued as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(
            f"requeued {requeued.task_name} {requeued.args} to {requeued.queue} "
            f"as task {requeued.requeued_task_id}"
        )

    @tasks_app.command("health")
    def health_command(
        host: Annotated[str | None, typer.Option(help="Only workers on this host (container probe)")] = None,
        queue: Annotated[str | None, typer.Option(help="Only workers consuming this queue")] = None,
        max_age: Annotated[float, typer.Option(help="Oldest acceptable heartbeat, seconds")] = 30.0,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """Exit 0 when matching workers beat recently and no task runs past its time limit, else 1."""
        components = components_factory()
        report = check_worker_health(components.engine, hostname=host, queue=queue, max_beat_age_s=max_age)
        if as_json:
            typer.echo(report.model_dump_json(indent=2))
        else:
            for worker in report.workers:
                flag = "stopped" if worker.stopped else ("ok" if worker.healthy else "UNHEALTHY")
                typer.echo(
                    f"{flag:<9} {worker.worker}  queues={worker.queues}  beat {worker.beat_age_s}s ago  "
                    f"active={worker.active_tasks}"
                )
            for problem in report.problems:
                typer.echo(f"problem: {problem}")
        raise typer.Exit(0 if report.healthy else 1)

    @tasks_app.command("queues")
    def queues_command() -> None:
        """Messages waiting per queue (work and dead-letter), read from the broker."""
        components = components_factory()
        try:
            depths = queue_depths(components.celery)
        except BrokerUnavailable as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        for name, depth in depths.items():
            typer.echo(f"{name:<10} {depth}")

    return tasks_app

"""`veritrace spool …` and `veritrace retention …`: the spool's encryption key and the retention purge.

Built by factories so the composition root (`cds/cli.py`) decides how objects are made. Exit codes: 0 done,
1 nothing done (retention off, another run in progress), 2 bad input or configuration.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from cds.composition import Components
from cds.settings import Settings
from integrations.dicom.spool import Spool
from integrations.dicom.spool_key import SpoolKeyError, create_spool_key
from integrations.ops.retention import run_retention


def build_spool_cli(settings_factory: Callable[[], Settings]) -> typer.Typer:
    spool_app = typer.Typer(help="The DICOM spool: its encryption key.", no_args_is_help=True)

    @spool_app.command("create-key")
    def create_key(
        key_file: Annotated[
            Path | None, typer.Option(help="Where to write it (default: VERITRACE_SPOOL_KEY_FILE)")
        ] = None,
    ) -> None:
        """Create the key that encrypts the spool at rest (mode 0600); never replaces an existing one."""
        target = key_file or settings_factory().spool_key_file
        if target is None:
            typer.echo("error: set VERITRACE_SPOOL_KEY_FILE or pass --key-file", err=True)
            raise typer.Exit(2)
        try:
            key = create_spool_key(target)
        except SpoolKeyError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        typer.echo(
            f"spool key {key.key_id.hex()} written to {target}. Give every dicom, api and worker process "
            f"VERITRACE_SPOOL_KEY_FILE={target}, and back it up: sealed files are unreadable without it."
        )

    return spool_app


def build_retention_cli(components_factory: Callable[[], Components]) -> typer.Typer:
    retention_app = typer.Typer(help="Retention of spool files and decision traces.", no_args_is_help=True)

    @retention_app.command("run")
    def run_command(
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Count what would go; change nothing")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    ) -> None:
        """Purge spool files of finished studies and stored traces past VERITRACE_RETENTION_*_DAYS."""
        components = components_factory()
        components.prepare_storage()
        settings = components.settings
        config = settings.retention_config()
        if not config.enabled:
            typer.echo(
                "retention is off (VERITRACE_RETENTION_SPOOL_DAYS / _TRACE_DAYS unset): nothing is deleted"
            )
            raise typer.Exit(1)
        # Purging deletes files and never reads them, so it needs no spool key.
        spool = Spool(settings.dicom_config().spool_dir)
        report = run_retention(components.engine, spool, components.ledger, config, dry_run=dry_run)
        if as_json:
            typer.echo(json.dumps(report.model_dump(), indent=2))
        elif report.skipped:
            typer.echo("another retention run is in progress; nothing done")
        else:
            verb = "would purge" if dry_run else "purged"
            typer.echo(
                f"{verb}: {report.instances} instance files and {report.sr_exports} SR files of "
                f"{report.studies} studies ({report.bytes_freed} bytes), {report.traces} decision traces"
            )
        raise typer.Exit(1 if report.skipped else 0)

    return retention_app

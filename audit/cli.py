"""``veritrace audit``: verify, prove, consistency, checkpoint, export, keygen.

Exit codes: 0 OK, 1 verification failure (the first bad index is printed), 2 usage error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from audit.config import LedgerConfig
from audit.export import export_bundle
from audit.ledger import BadRange, Ledger
from audit.node_store import LedgerIntegrityError
from audit.signing import KeyExists, NoSigningKey, generate_key

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_audit_cli(
    open_ledger: Callable[[], Ledger], ledger_config: Callable[[], LedgerConfig] | None = None
) -> typer.Typer:
    """The ``audit`` command group; the root CLI supplies how to open the ledger and read its config."""
    app = typer.Typer(
        help="The append-only audit ledger: verify, prove, checkpoint, export.", no_args_is_help=True
    )

    def config() -> LedgerConfig:
        return ledger_config() if ledger_config is not None else open_ledger().config

    @app.command()
    def verify() -> None:
        """Recompute every entry, node and root from the database against the trusted checkpoints."""
        report = open_ledger().verify()
        if report.ok:
            trusted = (
                f"checkpoint of size {report.trusted_size} ({report.trusted_source})"
                if report.trusted_size is not None
                else "no signed checkpoint yet: internal consistency only"
            )
            typer.echo(f"OK: {report.size} entries verified against {trusted} in {report.seconds:.2f} s")
            raise typer.Exit(EXIT_OK)
        where = (
            f"first bad index {report.first_bad_index}"
            if report.first_bad_index is not None
            else "checkpoints"
        )
        typer.echo(f"FAILED: {where}: {report.problem}")
        raise typer.Exit(EXIT_FAILED)

    @app.command()
    def prove(
        index: int,
        size: Annotated[int | None, typer.Option(help="Tree size (default: the latest checkpoint's)")] = None,
    ) -> None:
        """Print the inclusion proof of entry INDEX as JSON."""
        ledger = open_ledger()
        size = _default_size(ledger) if size is None else size
        _print(_guarded(lambda: ledger.inclusion_proof(index, size).model_dump(mode="json")))

    @app.command()
    def consistency(first: int, second: int) -> None:
        """Print the proof that the tree of SECOND entries extends the one of FIRST, as JSON."""
        ledger = open_ledger()
        _print(_guarded(lambda: ledger.consistency_proof(first, second).model_dump(mode="json")))

    @app.command()
    def checkpoint() -> None:
        """Sign and anchor a checkpoint of the log as it is now; print the signed note."""
        try:
            note = open_ledger().checkpoint().note
        except NoSigningKey as exc:
            _usage(str(exc))
        typer.echo(note, nl=False)

    @app.command()
    def export(
        output: Annotated[Path | None, typer.Option("--output", "-o", help="File (default: stdout)")] = None,
        start: Annotated[int, typer.Option(help="First index")] = 0,
        stop: Annotated[int | None, typer.Option(help="Index after the last one")] = None,
    ) -> None:
        """Export entries as a FHIR R4 Bundle of AuditEvents (IHE BALP) and Provenance."""
        if start < 0 or (stop is not None and stop < start):
            _usage(f"bad range {start}..{stop}")
        ledger = open_ledger()
        entries = (
            ledger.entry(e.index) if not e.payload_inline else e for e in ledger.iter_entries(start, stop)
        )
        text = json.dumps(export_bundle(entries, origin=ledger.config.origin), indent=1, ensure_ascii=False)
        if output is None:
            typer.echo(text)
        else:
            output.write_text(text + "\n", encoding="utf-8")

    @app.command()
    def keygen(
        rotate: Annotated[
            bool, typer.Option(help="Replace the current signing key (its public key stays)")
        ] = False,
    ) -> None:
        """Create the Ed25519 checkpoint signing key (mode 0600) and print its verifier key."""
        cfg = config()
        try:
            verifier = generate_key(cfg.key_dir, cfg.origin, rotate=rotate)
        except KeyExists as exc:
            _usage(f"{exc} (pass --rotate)")
        typer.echo(verifier.vkey)

    return app


def _default_size(ledger: Ledger) -> int:
    latest = ledger.latest_checkpoint()
    return latest.size if latest is not None else ledger.size()


def _guarded(make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return make()
    except BadRange as exc:
        return _usage(str(exc))
    except LedgerIntegrityError as exc:
        typer.echo(f"FAILED: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from exc


def _print(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, indent=1))


def _usage(message: str) -> Any:
    print(f"Error: {message}", file=sys.stderr)
    raise typer.Exit(EXIT_USAGE)

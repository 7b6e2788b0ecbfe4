"""`veritrace model …`: check a hospital's checkpoint and build tiny test models (mounted by cds/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def build_model_cli() -> typer.Typer:
    """The `model` sub-application; imports torch only when a command runs."""
    app = typer.Typer(help="Check and build VLM checkpoints.", no_args_is_help=True)

    @app.command("check")
    def check(
        path: Annotated[Path, typer.Argument(help="Local model directory")],
        device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
        allow_remote_code: Annotated[bool, typer.Option(help="Allow trust_remote_code")] = False,
        max_new_tokens: Annotated[int, typer.Option(min=1)] = 16,
    ) -> None:
        """Load the model, print what it is, and run one short generation on a synthetic image."""
        from PIL import Image

        from model.config import ModelConfig
        from model.runtime import ModelLoadError, load_vlm

        try:
            vlm = load_vlm(ModelConfig(path=path, device=device, allow_remote_code=allow_remote_code))
        except (ModelLoadError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from exc
        ident = vlm.identity
        typer.echo(f"family:       {ident.family}")
        typer.echo(f"architecture: {ident.architecture}")
        typer.echo(f"parameters:   {ident.parameter_count:,}")
        typer.echo(f"dtype:        {ident.dtype}")
        typer.echo(f"attention:    {ident.attention}")
        typer.echo(f"device:       {ident.device}")
        typer.echo(f"weights:      sha256:{ident.weights_sha256}")
        gradient = Image.linear_gradient("L").resize((224, 224)).convert("RGB")
        gen = vlm.generate([gradient], "Describe this image.", max_new_tokens=max_new_tokens)
        label = " [UNTRAINED MODEL: random weights, output is meaningless]" if ident.untrained else ""
        typer.echo(f"test output{label}: {gen.text!r}")
        typer.echo(
            f"tokens: {gen.token_count} new / {gen.prompt_token_count} prompt; "
            f"first token {gen.timings.time_to_first_token_s * 1e3:.0f} ms; total {gen.timings.total_s:.2f} s"
        )

    @app.command("make-tiny")
    def make_tiny_command(
        family: Annotated[str, typer.Argument(help="qwen2_5_vl, gemma3 or llava")],
        out_dir: Annotated[Path, typer.Argument(help="Directory to write")],
        seed: Annotated[int, typer.Option()] = 0,
    ) -> None:
        """Write a random tiny model of FAMILY (for tests and the demo; its output is labelled untrained)."""
        from model.tiny import TINY_FAMILIES, make_tiny

        if family not in TINY_FAMILIES:
            typer.echo(f"error: unknown family {family!r}; choose one of {sorted(TINY_FAMILIES)}", err=True)
            raise typer.Exit(code=2)
        written = make_tiny(family, out_dir, seed=seed)
        typer.echo(f"wrote untrained tiny {family} model to {written}")

    return app

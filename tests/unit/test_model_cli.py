"""`veritrace model make-tiny` and `check` through typer's runner (the same app cds/cli.py mounts)."""

from __future__ import annotations

from pathlib import Path

import torch
from typer.testing import CliRunner

from model.cli import build_model_cli

torch.set_num_threads(1)


def test_make_tiny_then_check_reports_the_model(tmp_path: Path) -> None:
    runner, app = CliRunner(), build_model_cli()
    made = runner.invoke(app, ["make-tiny", "llava", str(tmp_path / "llava")])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "llava" / "config.json").is_file()
    checked = runner.invoke(app, ["check", str(tmp_path / "llava"), "--max-new-tokens", "3"])
    assert checked.exit_code == 0, checked.output
    for expected in ("LlavaForConditionalGeneration", "float32", "sdpa", "sha256:", "UNTRAINED MODEL"):
        assert expected in checked.output


def test_check_refuses_hub_ids_and_unknown_families(tmp_path: Path) -> None:
    runner, app = CliRunner(), build_model_cli()
    refused = runner.invoke(app, ["check", "google/medgemma-4b-it"])
    assert refused.exit_code == 2 and "hub id" in refused.output
    unknown = runner.invoke(app, ["make-tiny", "mystery", str(tmp_path / "x")])
    assert unknown.exit_code == 2 and "unknown family" in unknown.output

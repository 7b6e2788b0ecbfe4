"""CPU threads for the model in a worker process: configured, or the cores shared among pool children."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cds.settings import Settings
from model.cpu_threads import cpu_threads_for


@pytest.mark.parametrize(
    ("configured", "children", "cores", "expected"),
    [
        (None, 1, 16, 16),  # one child: torch's own default, every core
        (None, 4, 16, 4),  # four children share sixteen cores
        (None, 3, 2, 1),  # more children than cores: never below one
        (None, 0, 8, 8),  # an unset concurrency counts as one child
        (1, 4, 16, 1),  # the operator's number wins
        (6, 1, 2, 6),
    ],
)
def test_cpu_threads_for(configured: int | None, children: int, cores: int, expected: int) -> None:
    assert cpu_threads_for(configured, children, cores) == expected


def test_setting_reaches_the_model_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERITRACE_MODEL_CPU_THREADS", "3")
    assert Settings().model_settings().cpu_threads == 3
    monkeypatch.delenv("VERITRACE_MODEL_CPU_THREADS")
    assert Settings().model_settings().cpu_threads is None


def test_setting_refuses_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERITRACE_MODEL_CPU_THREADS", "0")
    with pytest.raises(ValueError, match="cpu_threads"):
        Settings().model_settings()


def test_apply_sets_torch_threads_in_a_fresh_process() -> None:
    code = (
        "import torch; from model.cpu_threads import apply_cpu_threads; "
        "n = apply_cpu_threads(None, 64); print(n, torch.get_num_threads())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "1"]

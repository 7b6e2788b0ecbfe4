"""The GPU benchmark script runs end to end on the CPU with a tiny config, so the GPU run is not its first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "vlm_bench.py"


def test_vlm_bench_tiny_cpu_smoke(tmp_path: Path) -> None:
    out = tmp_path / "vlm_bench.json"
    args = [
        sys.executable,
        str(BENCH),
        "--tiny",
        "--device=cpu",
        "--images=112,224",
        "--prompt-tokens=120",
        "--new-tokens=12",
        "--naive-studies=2",
        "--concurrency=2,3",
        "--static-concurrency=2",
        "--constrained-tokens=24",
        "--hard-timeout-s=120",
        f"--json={out}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "VLM runtime benchmark" in proc.stdout and "studies/h" in proc.stdout
    res = json.loads(out.read_text())
    assert res["errors"] == []
    modes = [(r["mode"], r["concurrency"]) for r in res["runs"]]
    assert modes == [("naive", 1), ("scheduler", 2), ("scheduler", 3), ("scheduler+static", 2)]
    for run in res["runs"]:
        assert "error" not in run, run
        assert run["tokens_per_s"] > 0 and run["studies_per_hour"] > 0
    assert all(r["tokens"] == 12 for r in res["runs"][0]["rows"])  # 12 new tokens forced, no early stop
    assert res["runs"][2]["largest_batch"] == 3  # three concurrent studies ran as one batch
    assert res["constrained"]["mask_ms_per_token"] > 0
    assert res["floor"]["floor_ms_per_step"] > 0

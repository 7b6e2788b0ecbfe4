"""deploy/systemd: checked by `systemd-analyze verify` in a throwaway root, and against the real CLI."""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from cds.settings import Settings

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
VENV_CLI = "/opt/veritrace/venv/bin/veritrace"
SERVICES = sorted(p.name for p in UNITS.glob("*.service"))
TO_VERIFY = [
    "veritrace.target",
    "veritrace-migrate.service",
    "veritrace-api.service",
    "veritrace-dicom.service",
    "veritrace-worker@gpu.service",
    "veritrace-worker@io.service",
    "veritrace-serve.service",
]


def read_unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


def cli_commands() -> set[str]:
    """Command names declared in cds/cli.py (`@app.command()` / `@db_app.command("upgrade")`)."""
    tree = ast.parse((REPO / "cds" / "cli.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute):
                if decorator.func.attr != "command" or not isinstance(decorator.func.value, ast.Name):
                    continue
                explicit = [a.value for a in decorator.args if isinstance(a, ast.Constant)]
                name = str(explicit[0]) if explicit else node.name
                prefix = "db " if decorator.func.value.id == "db_app" else ""
                names.add(prefix + name)
    return names


def systemd_verify(tmp_path: Path, units_dir: Path) -> str:
    """Verify the units in a scratch root holding the host's system units and a stand-in CLI."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is required (Debian package systemd)")
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    shutil.copytree(units_dir, root / "etc/systemd/system")
    cli = root / VENV_CLI.lstrip("/")
    cli.parent.mkdir(parents=True)
    cli.write_text("#!/bin/sh\n")
    cli.chmod(0o755)
    result = subprocess.run(
        [analyze, f"--root={root}", "verify", "--man=no", *TO_VERIFY],
        cwd=root / "etc/systemd/system",
        capture_output=True,
        text=True,
        timeout=60,
    )
    return (result.stdout + result.stderr).strip() + (
        "" if result.returncode == 0 else f"\nrc={result.returncode}"
    )


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    assert systemd_verify(tmp_path, UNITS) == ""


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    broken = tmp_path / "units"
    shutil.copytree(UNITS, broken)
    api = broken / "veritrace-api.service"
    api.write_text(api.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    assert "restart specifier" in systemd_verify(tmp_path, broken)


def test_every_exec_start_is_a_real_cli_command() -> None:
    commands = cli_commands()
    assert {"api", "dicom", "worker", "serve", "db upgrade"} <= commands
    for name in SERVICES:
        exec_start = read_unit(name)["Service"]["ExecStart"]
        assert exec_start.startswith(VENV_CLI + " "), name
        words = exec_start.removeprefix(VENV_CLI + " ").split()
        command = " ".join(words[:2]) if words[0] == "db" else words[0]
        assert command in commands, f"{name}: {command}"


def test_services_run_unprivileged_with_owner_only_state() -> None:
    for name in SERVICES:
        service = read_unit(name)["Service"]
        assert service["User"] == "veritrace", name
        assert service["StateDirectory"] == "veritrace" and service["StateDirectoryMode"] == "0700", name
        assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict", name
        assert service["ReadWritePaths"] == str(Settings(home=Path("/var/lib/veritrace")).resolved_home)
        assert service["UMask"] == "0077", name


def test_split_units_read_secrets_from_a_separate_file() -> None:
    for name in SERVICES:
        if name == "veritrace-serve.service":
            continue  # the embedded database and broker have no passwords
        text = (UNITS / name).read_text()
        assert "EnvironmentFile=/etc/veritrace/veritrace.env" in text, name
        assert "EnvironmentFile=/etc/veritrace/secrets.env" in text, name
        assert "postgresql" not in read_unit(name)["Service"].get("Environment", ""), name


def test_only_the_worker_template_may_see_gpu_devices() -> None:
    for name in SERVICES:
        private = read_unit(name)["Service"].get("PrivateDevices", "no")
        expected = "no" if name in ("veritrace-worker@.service", "veritrace-serve.service") else "yes"
        assert private == expected, name


def test_long_running_units_wait_for_the_migration() -> None:
    target = read_unit("veritrace.target")["Unit"]["Wants"].split()
    assert {"veritrace-worker@gpu.service", "veritrace-worker@io.service", "veritrace-api.service"} <= set(
        target
    )
    for name in ("veritrace-api.service", "veritrace-dicom.service", "veritrace-worker@.service"):
        unit = read_unit(name)["Unit"]
        assert unit["Requires"] == "veritrace-migrate.service", name
        assert "veritrace-migrate.service" in unit["After"].split(), name
    assert read_unit("veritrace-migrate.service")["Service"]["Type"] == "oneshot"


def test_example_env_holds_only_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = {f"VERITRACE_{name.upper()}" for name in Settings.model_fields}
    for example in (UNITS / "veritrace.env.example", REPO / "deploy" / "env" / "veritrace.env"):
        lines = [line for line in example.read_text().splitlines() if line and not line.startswith("#")]
        pairs = dict(line.split("=", 1) for line in lines)
        assert set(pairs) <= fields, (example.name, set(pairs) - fields)
        assert not any(key.endswith(("DATABASE_URL", "BROKER_URL")) for key in pairs), example.name
        for key, value in pairs.items():
            monkeypatch.setenv(key, value)
        Settings()  # the values parse as the processes will parse them
        for key in pairs:
            monkeypatch.delenv(key)

"""The review app is mounted only with a sign-in method; `veritrace review add-user` gives the local one."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cds.app import create_app
from cds.cli import app as cli
from cds.composition import Components
from cds.settings import Settings


def _client(settings: Settings) -> TestClient:
    components = Components(settings)
    components.prepare_storage()
    return TestClient(
        create_app(settings, session_factory=components.session_factory, ledger=components.ledger)
    )


def test_review_mounted_once_a_local_user_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERITRACE_HOME", str(tmp_path / "home"))
    assert _client(Settings()).get("/review/api/analyses").status_code == 404

    result = CliRunner().invoke(
        cli,
        ["review", "add-user", "alice", "--role", "compliance-officer", "--password", "a long passphrase"],
    )
    assert result.exit_code == 0, result.output
    users_file = tmp_path / "home" / "review-users.json"
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    stored = json.loads(users_file.read_text())["users"]
    assert stored[0]["roles"] == ["compliance-officer"]
    assert "a long passphrase" not in users_file.read_text()

    response = _client(Settings()).get("/review/api/analyses")
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"


def test_short_password_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERITRACE_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(cli, ["review", "add-user", "bob", "--role", "admin", "--password", "short"])
    assert result.exit_code == 2
    assert not (tmp_path / "home" / "review-users.json").exists()

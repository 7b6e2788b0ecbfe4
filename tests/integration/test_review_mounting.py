"""The review app is mounted only with a sign-in method; `veritrace review add-user` gives the local one."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from audit.review.login_sealing import LOGIN_KEY_FILE, LoginKeyError, new_login_key
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


def _oidc_env(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("VERITRACE_HOME", str(home))
    monkeypatch.setenv("VERITRACE_REVIEW_OIDC_ISSUER", "https://idp.example-hospital.invalid")
    monkeypatch.setenv("VERITRACE_REVIEW_OIDC_CLIENT_ID", "veritrace-review")


def test_oidc_sign_in_seals_with_the_configured_login_key_or_a_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _oidc_env(monkeypatch, tmp_path / "home")
    key_file = tmp_path / "home" / "keys" / LOGIN_KEY_FILE
    key = new_login_key()
    monkeypatch.setenv("VERITRACE_REVIEW_LOGIN_KEY", key)
    settings = Settings()
    config = settings.review_config()
    assert config is not None and config.login_key is not None
    assert config.login_key.get_secret_value() == key and key not in repr(settings)
    assert _client(settings).get("/review/api/me").status_code == 401
    assert not key_file.exists(), "a configured key means no key file"

    monkeypatch.delenv("VERITRACE_REVIEW_LOGIN_KEY")
    assert _client(Settings()).get("/review/api/me").status_code == 401
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_a_malformed_login_key_stops_the_api_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _oidc_env(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("VERITRACE_REVIEW_LOGIN_KEY", "too-short")
    with pytest.raises(LoginKeyError, match="review login key"):
        _client(Settings())

"""Audit entries (patient references) and STOW-RS need a configured bearer token; public log data does not."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cds.app import create_app
from cds.composition import Components
from cds.settings import Settings


def _client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> TestClient:
    monkeypatch.setenv("VERITRACE_HOME", str(tmp_path / "home"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    components = Components(settings)
    components.prepare_storage()
    components.ledger.append("test.entry", "tester", {"n": 1}, patient_ref="Patient/p1")
    components.ledger.checkpoint()
    return TestClient(
        create_app(settings, session_factory=components.session_factory, ledger=components.ledger)
    )


def test_entries_refused_without_a_configured_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(tmp_path, monkeypatch)
    assert client.get("/audit/entries/0").status_code == 401
    assert client.get("/audit/entries/0", headers={"Authorization": "Bearer guess"}).status_code == 403
    assert client.get("/audit/checkpoint").status_code == 200  # anyone may hold the checkpoint


def test_entries_served_to_an_auditor_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(tmp_path, monkeypatch, VERITRACE_AUDIT_API_TOKENS='["auditor-token-1"]')
    response = client.get("/audit/entries/0", headers={"Authorization": "Bearer auditor-token-1"})
    assert response.status_code == 200
    assert response.json()["entry"]["patient_ref"] == "Patient/p1"
    assert (
        client.get("/audit/entries/0", headers={"Authorization": "Bearer auditor-token-2"}).status_code == 403
    )


def test_stow_is_off_without_tokens_and_guarded_with_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    off = _client(tmp_path / "a", monkeypatch)
    assert off.post("/dicomweb/studies", content=b"").status_code == 404
    on = _client(tmp_path / "b", monkeypatch, VERITRACE_STOW_TOKENS='["pacs-token"]')
    assert on.post("/dicomweb/studies", content=b"").status_code == 401
    refused = on.post("/dicomweb/studies", content=b"", headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 403
    allowed = on.post(
        "/dicomweb/studies",
        content=b"",
        headers={"Authorization": "Bearer pacs-token", "Content-Type": "text/plain"},
    )
    assert allowed.status_code == 415  # past authentication, refused for its media type

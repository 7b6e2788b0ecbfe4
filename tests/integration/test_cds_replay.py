"""When a hook call's token is claimed (``jti`` replay check), now that a successful call claims it
together with its cards and audit entry (one group-commit submission).

What must not change for a client: a replayed token is answered 401 "replay" whatever else is wrong
with the call; a token that passed signature verification is spent even when the call is refused
(400, 412); and a replayed call never reaches the EHR's FHIR server (the claim is settled before the
first prefetch fetch). The FHIR server here is a real HTTP server on localhost counting requests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cds_support import ISSUER, PUBLIC_BASE, Store, build_app, hook_body, make_store, searchset, seed_report
from fastapi.testclient import TestClient

from cds.client_auth.ehr_signer import EhrTokenSigner

SERVICE = "/cds-services/veritrace-patient-view"


class CountingFhirServer:
    """Answers every search with an empty searchset and counts the requests."""

    def __init__(self) -> None:
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                body = json.dumps(searchset()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/fhir"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)


@pytest.fixture
def fhir() -> Iterator[CountingFhirServer]:
    server = CountingFhirServer()
    server._thread.start()
    try:
        yield server
    finally:
        server._server.shutdown()
        server._server.server_close()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path)


@pytest.fixture
def signer() -> EhrTokenSigner:
    return EhrTokenSigner.generate(ISSUER, alg="ES384")


def _post(client: TestClient, token: str, body: dict[str, Any]) -> Any:
    return client.post(SERVICE, json=body, headers={"Authorization": f"Bearer {token}"})


def _good_body(patient: str = "pr1") -> dict[str, Any]:
    prefetch = {"finalReports": searchset(), "imagingStudies": searchset()}
    return hook_body("patient-view", {"userId": "Practitioner/u1", "patientId": patient}, prefetch)


def _assert_replay(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert "replay" in response.json()["issue"][0]["diagnostics"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_replayed_call_never_reaches_the_fhir_server(
    tmp_path: Path, store: Store, signer: EhrTokenSigner, fhir: CountingFhirServer
) -> None:
    seed_report(store, patient_id="pr1")
    body = hook_body(
        "patient-view",
        {"userId": "Practitioner/u1", "patientId": "pr1"},
        fhirServer=fhir.base_url,
        fhirAuthorization={"access_token": "t", "token_type": "Bearer"},
    )
    token = signer.token(PUBLIC_BASE + SERVICE)
    with TestClient(build_app(tmp_path, store, signer)) as client:
        first = _post(client, token, body)
        assert first.status_code == 200, first.text
        assert len(first.json()["cards"]) == 1
        fetched = fhir.hits
        assert fetched == 2  # finalReports and imagingStudies
        _assert_replay(_post(client, token, body))
    assert fhir.hits == fetched
    entry = store.ledger.entry(store.ledger.size() - 1)
    assert entry.payload["status"] == 401 and entry.payload["reason"].endswith("(replay)")
    assert entry.patient_ref is None and "hook" not in entry.payload  # as if refused at authentication


def test_a_replayed_token_with_a_bad_body_is_refused_as_a_replay(
    tmp_path: Path, store: Store, signer: EhrTokenSigner
) -> None:
    token = signer.token(PUBLIC_BASE + SERVICE)
    with TestClient(build_app(tmp_path, store, signer)) as client:
        assert _post(client, token, _good_body()).status_code == 200
        _assert_replay(
            client.post(SERVICE, content=b"{not json", headers={"Authorization": f"Bearer {token}"})
        )
        _assert_replay(_post(client, token, {"hook": "patient-view"}))


@pytest.mark.parametrize(
    ("refused_body", "status"),
    [
        (hook_body("patient-view", {"userId": "Practitioner/u1"}, {}), 400),  # no patientId
        (hook_body("patient-view", {"userId": "Practitioner/u1", "patientId": "pr2"}), 412),  # no prefetch
    ],
)
def test_a_refused_call_still_spends_its_token(
    tmp_path: Path, store: Store, signer: EhrTokenSigner, refused_body: dict[str, Any], status: int
) -> None:
    token = signer.token(PUBLIC_BASE + SERVICE)
    with TestClient(build_app(tmp_path, store, signer)) as client:
        assert _post(client, token, refused_body).status_code == status
        _assert_replay(_post(client, token, _good_body("pr2")))
        assert _post(client, signer.token(PUBLIC_BASE + SERVICE), _good_body("pr2")).status_code == 200

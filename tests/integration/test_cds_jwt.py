"""The CDS client JWT matrix (CDS Hooks 2.0 §Trusting CDS Clients), each case against the real app.

Keys are generated here with `cryptography`; jku / rotation cases fetch a JWK Set from a real HTTP
server on localhost. The replay cache is the real database table.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cds_support import (
    ISSUER,
    PUBLIC_BASE,
    JwksServer,
    Store,
    alg_none_token,
    hook_body,
    hs256_public_key_token,
    make_store,
    settings_for,
)
from fastapi.testclient import TestClient

from cds.app import create_app
from cds.client_auth.ehr_signer import EhrTokenSigner
from cds.settings import Settings

SERVICE = "/cds-services/veritrace-patient-view"
AUD = PUBLIC_BASE + SERVICE
BODY = hook_body(
    "patient-view",
    {"userId": "Practitioner/u1", "patientId": "p1"},
    {"finalReports": None, "imagingStudies": None},
)


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    with JwksServer().running() as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path)


def _client(tmp_path: Path, store: Store, issuers: dict[str, Any]) -> TestClient:
    settings: Settings = settings_for(tmp_path, issuers=issuers)
    return TestClient(create_app(settings, session_factory=store.session_factory, ledger=store.ledger))


def _post(client: TestClient, token: str | None, url: str = SERVICE) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.post(url, json=BODY, headers=headers)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _assert_refused(response: Any, status: int, phrase: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert phrase in body["issue"][0]["diagnostics"]


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256", "RS256"])
def test_valid_token_with_inline_key(tmp_path: Path, store: Store, alg: str) -> None:
    signer = EhrTokenSigner.generate(ISSUER, alg=alg)
    with _client(tmp_path, store, {ISSUER: {"jwks": signer.jwks()}}) as client:
        assert _post(client, signer.token(AUD)).status_code == 200
    assert store.ledger.entry(store.ledger.size() - 1).payload["issuer"] == ISSUER


def test_valid_es384_token_from_allowed_jku(tmp_path: Path, store: Store, jwks_server: JwksServer) -> None:
    signer = EhrTokenSigner.generate(ISSUER, alg="ES384", jku=jwks_server.url)
    jwks_server.jwks = signer.jwks()
    with _client(tmp_path, store, {ISSUER: {"jku": [jwks_server.url]}}) as client:
        assert _post(client, signer.token(AUD)).status_code == 200
        assert _post(client, signer.token(AUD)).status_code == 200
    assert jwks_server.hits == 1  # cached


def test_audience_as_array_is_accepted(tmp_path: Path, store: Store) -> None:
    signer = EhrTokenSigner.generate(ISSUER, alg="RS384")
    with _client(tmp_path, store, {ISSUER: {"jwks": signer.jwks()}}) as client:
        assert _post(client, signer.token(AUD, claims={"aud": [AUD]})).status_code == 200


@pytest.mark.parametrize(
    ("case", "status", "phrase"),
    [
        ("expired", 401, "expired"),
        ("future-iat", 401, "future"),
        ("stale-iat", 401, "too old"),
        ("wrong-aud", 401, "aud"),
        ("aud-of-other-service", 401, "aud"),
        ("missing-jti", 401, "jti"),
        ("unknown-iss", 403, "issuer"),
        ("no-kid", 401, "kid"),
        ("typ-not-jwt", 401, "typ"),
        ("bad-signature", 401, "rejected"),
        ("missing-header", 401, "missing Authorization"),
        ("not-bearer", 401, "Bearer"),
        ("garbage", 401, "not a JWS"),
    ],
)
def test_refused_tokens(tmp_path: Path, store: Store, case: str, status: int, phrase: str) -> None:
    signer = EhrTokenSigner.generate(ISSUER, alg="ES384")
    now = time.time()
    tokens: dict[str, str | None] = {
        "expired": signer.token(AUD, issued_at=now - 200, lifetime_s=100),
        "future-iat": signer.token(AUD, issued_at=now + 600),
        "stale-iat": signer.token(AUD, issued_at=now - 3600, lifetime_s=7200),
        "wrong-aud": signer.token("https://elsewhere.example/cds-services/veritrace-patient-view"),
        "aud-of-other-service": signer.token(PUBLIC_BASE + "/cds-services/veritrace-encounter-discharge"),
        "missing-jti": signer.token(AUD, claims={"jti": None}),
        "unknown-iss": signer.token(AUD, claims={"iss": "https://stranger.example/"}),
        "no-kid": signer.token(AUD, header={"kid": None}),
        "typ-not-jwt": signer.token(AUD, header={"typ": "at+jwt"}),
        "bad-signature": EhrTokenSigner(
            ISSUER, EhrTokenSigner.generate(ISSUER).key, kid=signer.kid, alg="ES384"
        ).token(AUD),
        "missing-header": None,
        "not-bearer": "x",
        "garbage": "not.a.jwt",
    }
    with _client(tmp_path, store, {ISSUER: {"jwks": signer.jwks()}}) as client:
        if case == "not-bearer":
            response = client.post(SERVICE, json=BODY, headers={"Authorization": "Basic abc"})
        else:
            response = _post(client, tokens[case])
    _assert_refused(response, status, phrase)
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    entry = store.ledger.entry(store.ledger.size() - 1)
    assert entry.kind == "cds.hook" and entry.payload["status"] == status and entry.patient_ref is None


def test_jku_not_on_the_issuers_allow_list(tmp_path: Path, store: Store, jwks_server: JwksServer) -> None:
    signer = EhrTokenSigner.generate(ISSUER, alg="ES384", jku=jwks_server.url)
    jwks_server.jwks = signer.jwks()
    with _client(tmp_path, store, {ISSUER: {"jku": ["https://ehr.test.example/jwks.json"]}}) as client:
        _assert_refused(_post(client, signer.token(AUD)), 403, "jku")
    assert jwks_server.hits == 0  # never fetched a URL the issuer did not list


def test_unknown_kid_then_rotated_in(tmp_path: Path, store: Store, jwks_server: JwksServer) -> None:
    old = EhrTokenSigner.generate(ISSUER, alg="ES384", kid="2025-key", jku=jwks_server.url)
    new = EhrTokenSigner.generate(ISSUER, alg="ES384", kid="2026-key", jku=jwks_server.url)
    jwks_server.jwks = old.jwks()
    with _client(tmp_path, store, {ISSUER: {"jku": [jwks_server.url]}}) as client:
        assert _post(client, old.token(AUD)).status_code == 200
        assert jwks_server.hits == 1
        # The EHR rotates: the new key is published, then used. The cached set lacks the kid, so the
        # service re-fetches once and accepts.
        jwks_server.jwks = {"keys": [old.public_jwk(), new.public_jwk()]}
        client.app.state.cds.verifier.jwks.min_refetch_s = 0  # type: ignore[attr-defined]
        assert _post(client, new.token(AUD)).status_code == 200
        assert jwks_server.hits == 2


def test_unknown_kid_never_published(tmp_path: Path, store: Store, jwks_server: JwksServer) -> None:
    known = EhrTokenSigner.generate(ISSUER, alg="ES384", kid="known", jku=jwks_server.url)
    rogue = EhrTokenSigner.generate(ISSUER, alg="ES384", kid="rogue", jku=jwks_server.url)
    jwks_server.jwks = known.jwks()
    with _client(tmp_path, store, {ISSUER: {"jku": [jwks_server.url]}}) as client:
        _assert_refused(_post(client, rogue.token(AUD)), 401, "kid")
        _assert_refused(_post(client, rogue.token(AUD)), 401, "kid")
    assert jwks_server.hits == 1  # the second unknown kid within min_refetch_s does not refetch


def test_alg_none_is_refused(tmp_path: Path, store: Store) -> None:
    signer = EhrTokenSigner.generate(ISSUER, alg="ES384")
    with _client(tmp_path, store, {ISSUER: {"jwks": signer.jwks()}}) as client:
        _assert_refused(_post(client, alg_none_token(signer, AUD)), 401, "'none' is refused")


def test_hs256_with_the_public_key_as_secret_is_refused(tmp_path: Path, store: Store) -> None:
    signer = EhrTokenSigner.generate(ISSUER, alg="RS384")
    with _client(tmp_path, store, {ISSUER: {"jwks": signer.jwks()}}) as client:
        _assert_refused(_post(client, hs256_public_key_token(signer, AUD)), 401, "'HS256' is refused")


def test_key_of_another_family_than_alg_is_refused(tmp_path: Path, store: Store) -> None:
    ec_signer = EhrTokenSigner.generate(ISSUER, alg="ES384", kid="k")
    rsa_signer = EhrTokenSigner.generate(ISSUER, alg="RS384", kid="k")
    with _client(tmp_path, store, {ISSUER: {"jwks": ec_signer.jwks()}}) as client:
        _assert_refused(_post(client, rsa_signer.token(AUD)), 401, "does not fit")


def test_replayed_jti_is_refused_across_replicas(tmp_path: Path, store: Store) -> None:
    signer = EhrTokenSigner.generate(ISSUER, alg="ES384")
    token = signer.token(AUD)
    issuers = {ISSUER: {"jwks": signer.jwks()}}
    # Two app instances on one database stand for two API replicas behind a load balancer.
    with _client(tmp_path, store, issuers) as first, _client(tmp_path, store, issuers) as second:
        assert _post(first, token).status_code == 200
        _assert_refused(_post(second, token), 401, "replay")
        _assert_refused(_post(first, token), 401, "replay")


def test_jwt_checks_apply_to_feedback_with_its_own_aud(tmp_path: Path, store: Store) -> None:
    signer = EhrTokenSigner.generate(ISSUER, alg="ES384")
    feedback_url = SERVICE + "/feedback"
    body = {
        "feedback": [
            {
                "card": "00000000-0000-0000-0000-000000000000",
                "outcome": "overridden",
                "outcomeTimestamp": "2026-01-01T00:00:00Z",
            }
        ]
    }
    with _client(tmp_path, store, {ISSUER: {"jwks": signer.jwks()}}) as client:
        wrong = client.post(feedback_url, json=body, headers={"Authorization": f"Bearer {signer.token(AUD)}"})
        _assert_refused(wrong, 401, "aud")
        right = client.post(
            feedback_url,
            json=body,
            headers={"Authorization": f"Bearer {signer.token(PUBLIC_BASE + feedback_url)}"},
        )
        _assert_refused(right, 400, "not a card returned by this service")


def test_jwt_off_only_by_explicit_setting(tmp_path: Path, store: Store) -> None:
    settings = settings_for(tmp_path, issuers={})
    with TestClient(
        create_app(settings, session_factory=store.session_factory, ledger=store.ledger)
    ) as client:
        _assert_refused(_post(client, None), 401, "missing Authorization")


def test_unsigned_decode_is_never_trusted() -> None:
    """Guard the helper the verifier uses to read iss before verifying: PyJWT must still need a key."""
    with pytest.raises(jwt.PyJWTError):
        jwt.decode("a.b.c", options={"verify_signature": True}, algorithms=["ES384"])

"""Claim and header checks of the CDS client JWT beyond the main matrix (``test_cds_jwt.py``).

The verifier splits the token once and checks the registered claims itself (RFC 7519 §4.1) after the
signature; these cases pin the edges PyJWT used to decide for us: NumericDate types, ``nbf``, ``aud``
shapes, ``crit`` (RFC 7515 §4.1.11), padding, and a signature moved from another token.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cds_support import ISSUER, PUBLIC_BASE, Store, hook_body, make_store, settings_for
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fastapi.testclient import TestClient

from cds.app import create_app
from cds.client_auth.ehr_signer import EhrTokenSigner

SERVICE = "/cds-services/veritrace-patient-view"
AUD = PUBLIC_BASE + SERVICE
BODY = hook_body(
    "patient-view",
    {"userId": "Practitioner/u1", "patientId": "p1"},
    {"finalReports": None, "imagingStudies": None},
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path)


@pytest.fixture
def signer() -> EhrTokenSigner:
    return EhrTokenSigner.generate(ISSUER, alg="ES384")


def _post(
    tmp_path: Path, store: Store, signer: EhrTokenSigner, token: str, jwks: dict[str, Any] | None = None
) -> Any:
    settings = settings_for(tmp_path, issuers={ISSUER: {"jwks": jwks or signer.jwks()}})
    with TestClient(
        create_app(settings, session_factory=store.session_factory, ledger=store.ledger)
    ) as client:
        return client.post(SERVICE, json=BODY, headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize(
    ("claims", "header", "phrase"),
    [
        ({"exp": True}, None, "NumericDate"),
        ({"exp": "2099-01-01"}, None, "NumericDate"),
        ({"iat": None}, None, "no iat claim"),
        ({"exp": None}, None, "no exp claim"),
        ({"aud": None}, None, "no aud claim"),
        ({"iss": None}, None, "no iss"),
        ({"jti": ""}, None, "jti must be a non-empty string"),
        ({"jti": 42}, None, "jti must be a non-empty string"),
        ({"nbf": time.time() + 600}, None, "nbf is in the future"),
        ({"aud": ["https://elsewhere.example/"]}, None, "aud"),
        ({"aud": 7}, None, "aud"),
        ({"aud": [7, {"x": AUD}]}, None, "aud"),
        (None, {"crit": ["exp"]}, "crit"),
        (None, {"b64": False, "crit": ["b64"]}, "not a JWS"),  # RFC 7797 unencoded payload
    ],
)
def test_refused_claims_and_headers(
    tmp_path: Path,
    store: Store,
    signer: EhrTokenSigner,
    claims: dict[str, Any] | None,
    header: dict[str, Any] | None,
    phrase: str,
) -> None:
    response = _post(tmp_path, store, signer, signer.token(AUD, claims=claims, header=header))
    assert response.status_code == 401, response.text
    assert phrase in response.json()["issue"][0]["diagnostics"]
    assert store.ledger.entry(store.ledger.size() - 1).payload["status"] == 401


def test_aud_list_naming_us_and_a_past_nbf_are_accepted(
    tmp_path: Path, store: Store, signer: EhrTokenSigner
) -> None:
    token = signer.token(AUD, claims={"aud": ["https://other.example/", AUD], "nbf": int(time.time()) - 5})
    assert _post(tmp_path, store, signer, token).status_code == 200


def _signed_es(key: ec.EllipticCurvePrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Sign as an EHR would, but by hand: padded segments, or a key PyJWT would refuse to sign with."""
    segments = [_b64url(json.dumps(part).encode()) for part in (header, claims)]
    return _finish(key, segments)


def _finish(key: ec.EllipticCurvePrivateKey, segments: list[str]) -> str:
    size = (key.curve.key_size + 7) // 8
    r, s = decode_dss_signature(key.sign(".".join(segments).encode(), ec.ECDSA(hashes.SHA384())))
    return ".".join([*segments, _b64url(r.to_bytes(size, "big") + s.to_bytes(size, "big"))])


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims() -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUD, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}


def test_padded_segments_signed_as_sent_are_accepted(
    tmp_path: Path, store: Store, signer: EhrTokenSigner
) -> None:
    """Some issuers pad; the signature then covers the padded text, as PyJWT also verifies it."""
    header = {"alg": "ES384", "typ": "JWT", "kid": signer.kid}
    segments = [_b64url(json.dumps(part).encode()) for part in (header, _claims())]
    padded = [part + "=" * (-len(part) % 4) for part in segments]
    assert padded != segments
    assert isinstance(signer.key, ec.EllipticCurvePrivateKey)
    assert _post(tmp_path, store, signer, _finish(signer.key, padded)).status_code == 200


def test_signature_of_another_token_is_rejected(tmp_path: Path, store: Store, signer: EhrTokenSigner) -> None:
    mine = signer.token(AUD, jti="mine").split(".")
    theirs = signer.token(AUD, jti="theirs").split(".")
    response = _post(tmp_path, store, signer, ".".join((mine[0], mine[1], theirs[2])))
    assert response.status_code == 401
    assert "signature verification failed" in response.json()["issue"][0]["diagnostics"]


def test_ec_key_of_the_wrong_curve_is_rejected(tmp_path: Path, store: Store) -> None:
    """A P-256 key published for ES384 (P-384) tokens: refused before any signature is checked."""
    p256 = EhrTokenSigner.generate(ISSUER, alg="ES256", kid="k")
    assert isinstance(p256.key, ec.EllipticCurvePrivateKey)
    token = _signed_es(p256.key, {"alg": "ES384", "typ": "JWT", "kid": "k"}, _claims())
    jwks = {"keys": [{**p256.public_jwk(), "alg": "ES384"}]}
    response = _post(tmp_path, store, p256, token, jwks=jwks)
    assert response.status_code == 401
    assert "cannot be used" in response.json()["issue"][0]["diagnostics"]

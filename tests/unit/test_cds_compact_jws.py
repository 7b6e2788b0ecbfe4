"""The compact-JWS splitter the CDS client verifier reads tokens with (RFC 7515 §7.1, RFC 4648 §5)."""

from __future__ import annotations

import base64
import json

import pytest

from cds.client_auth.compact_jws import MalformedJws, parse_compact_jws
from cds.client_auth.ehr_signer import EhrTokenSigner


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _token(header: object, claims: object, signature: bytes = b"sig") -> str:
    return ".".join((_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature)))


def test_a_signed_token_splits_into_what_pyjwt_signed() -> None:
    signer = EhrTokenSigner.generate("https://ehr.example/", alg="ES384", kid="k1")
    token = signer.token("https://cds.example/cds-services/x", jti="j-1")
    jws = parse_compact_jws(token)
    assert jws.header == {"alg": "ES384", "typ": "JWT", "kid": "k1"}
    assert jws.claims["jti"] == "j-1" and jws.claims["iss"] == "https://ehr.example/"
    assert jws.signing_input == token.rsplit(".", 1)[0].encode()
    assert len(jws.signature) == 96  # ES384: r || s, 48 bytes each (RFC 7518 §3.4)


def test_padding_is_tolerated_like_pyjwt() -> None:
    header, claims, signature = _token({"alg": "ES384"}, {"iss": "a"}).split(".")
    padded = ".".join(part + "=" * (-len(part) % 4) for part in (header, claims, signature))
    assert parse_compact_jws(padded).claims == {"iss": "a"}


@pytest.mark.parametrize(
    ("token", "phrase"),
    [
        ("a.b", "three dot-separated parts"),
        ("a.b.c.d", "three dot-separated parts"),
        ("!!!!." + _b64(b"{}") + ".AA", "header is not base64url"),
        (_b64(b"{}") + ".eyJ9+." + "AA", "payload is not base64url"),
        (_b64(b"{}") + "." + _b64(b"{}") + ".A", "signature has a bad base64url length"),
        (_b64(b"{}") + "==." + _b64(b"{}") + ".AA", "header has a bad base64url length or padding"),
        # "AB" decodes to the same byte as "AA": unused trailing bits set -> a second spelling.
        (_b64(b"{}") + "." + _b64(b"{}") + ".AB", "signature is not canonical"),
        (_b64(b"not json") + "." + _b64(b"{}") + ".AA", "header is not JSON"),
        (_b64(b"[1]") + "." + _b64(b"{}") + ".AA", "header is not a JSON object"),
        (_b64(b"{}") + "." + _b64(b'"text"') + ".AA", "payload is not a JSON object"),
        (_b64(b"{}") + "." + _b64(b"\xff\xfe") + ".AA", "payload is not JSON"),
    ],
)
def test_malformed_tokens_are_refused_naming_the_part(token: str, phrase: str) -> None:
    with pytest.raises(MalformedJws, match=phrase):
        parse_compact_jws(token)


def test_the_error_never_echoes_token_content() -> None:
    secret = "Patient-Jane-Doe"
    with pytest.raises(MalformedJws) as caught:
        parse_compact_jws(_b64(b"{}") + "." + _b64(secret.encode()) + ".AA")
    assert secret not in str(caught.value)

"""Verify the CDS client JWT every call carries (CDS Hooks 2.0 §Trusting CDS Clients).

Order of checks, cheapest and least trusting first: header shape (``alg`` from our asymmetric list —
``none`` and HMAC refused, so a public key can never be used as an HMAC secret — ``typ`` JWT, ``kid``
present), the unverified ``iss`` against the allow-list (403), ``jku`` against that issuer's list
(403), the key by ``kid`` (re-fetching the JWK Set once on an unknown kid), then the signature and the
claims ``aud`` (= the URL called), ``exp``, ``iat`` (neither in the future nor older than
``max_age_s``), ``jti`` (required, and replay-checked last so a bad token never burns a jti).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from anyio import to_thread

from cds.client_auth.jti_replay import JtiReplayCache
from cds.client_auth.jwks_cache import JwksCache, JwksUnavailable
from cds.client_auth.trusted_issuers import TrustedIssuer, TrustedIssuers

ALLOWED_ALGORITHMS = frozenset({"ES384", "RS384", "ES256", "RS256"})
KEY_TYPE_FOR = {"ES": "EC", "RS": "RSA"}


class InvalidClientToken(Exception):
    """The token is not acceptable: answered 401."""


class UntrustedClient(Exception):
    """The token names an issuer or key location we do not trust: answered 403."""


@dataclass(frozen=True)
class CdsClient:
    """Who called: the verified issuer and token identity (no patient data)."""

    iss: str
    kid: str
    jti: str
    tenant: str | None = None


class ClientTokenVerifier:
    def __init__(
        self,
        issuers: TrustedIssuers,
        jwks: JwksCache,
        replay: JtiReplayCache,
        *,
        leeway_s: float = 30.0,
        max_age_s: float = 300.0,
    ) -> None:
        self.issuers = issuers
        self.jwks = jwks
        self.replay = replay
        self.leeway_s = leeway_s
        self.max_age_s = max_age_s
        self._keys: dict[tuple[str, str], Any] = {}

    async def verify(self, authorization: str | None, audience: str) -> CdsClient:
        """Raises ``InvalidClientToken`` (401) or ``UntrustedClient`` (403)."""
        token = _bearer(authorization)
        header = _header(token)
        alg, kid = header["alg"], header["kid"]
        iss = _unverified_issuer(token)
        issuer = self.issuers.get(iss)
        if issuer is None:
            raise UntrustedClient("issuer is not in the trusted CDS clients list")
        jwk = await self._find_key(issuer, header)
        if jwk is None:
            raise InvalidClientToken(f"no key with kid {kid!r} for this issuer")
        claims = self._decode(token, jwk, alg, kid, iss, audience)
        expires_at = datetime.fromtimestamp(float(claims["exp"]) + self.leeway_s, UTC)
        first = await to_thread.run_sync(self.replay.first_use, iss, str(claims["jti"]), expires_at)
        if not first:
            raise InvalidClientToken("token jti was already used (replay)")
        tenant = claims.get("tenant")
        return CdsClient(
            iss=iss, kid=kid, jti=str(claims["jti"]), tenant=tenant if isinstance(tenant, str) else None
        )

    async def _find_key(self, issuer: TrustedIssuer, header: dict[str, Any]) -> dict[str, Any] | None:
        kid, jku = header["kid"], header.get("jku")
        if jku is not None:
            if not isinstance(jku, str) or jku not in issuer.jku:
                raise UntrustedClient("jku is not on this issuer's allow-list")
            urls: tuple[str, ...] = (jku,)
        else:
            inline = _inline_key(issuer, kid)
            if inline is not None:
                return inline
            urls = issuer.jku
        for url in urls:
            try:
                key = await self.jwks.key(url, kid)
            except JwksUnavailable as exc:
                raise InvalidClientToken(f"issuer keys unavailable: {exc}") from exc
            if key is not None:
                return key
        return None

    def _decode(
        self, token: str, jwk: dict[str, Any], alg: str, kid: str, iss: str, audience: str
    ) -> dict[str, Any]:
        if jwk.get("kty") != KEY_TYPE_FOR[alg[:2]] or jwk.get("alg", alg) != alg:
            raise InvalidClientToken(f"key {kid!r} does not fit algorithm {alg}")
        cache_key = (json.dumps(jwk, sort_keys=True), alg)
        key = self._keys.get(cache_key)
        if key is None:
            try:
                key = jwt.PyJWK(jwk, algorithm=alg).key
            except jwt.PyJWTError as exc:
                raise InvalidClientToken(f"key {kid!r} cannot be used: {exc}") from exc
            self._keys[cache_key] = key
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=audience,
                issuer=iss,
                leeway=self.leeway_s,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidClientToken("token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidClientToken("token aud is not this service's URL") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidClientToken("token iat or nbf is in the future") from exc
        except jwt.PyJWTError as exc:
            raise InvalidClientToken(f"token rejected: {exc}") from exc
        now = datetime.now(UTC).timestamp()
        iat = float(claims["iat"])
        if iat > now + self.leeway_s:
            raise InvalidClientToken("token iat is in the future")
        if now - iat > self.max_age_s + self.leeway_s:
            raise InvalidClientToken("token iat is too old")
        if not isinstance(claims["jti"], str) or not claims["jti"]:
            raise InvalidClientToken("token jti must be a non-empty string")
        return claims


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise InvalidClientToken("missing Authorization header")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidClientToken("Authorization header is not a Bearer token")
    return token.strip()


def _header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidClientToken("token is not a JWS") from exc
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise InvalidClientToken(f"algorithm {alg!r} is refused; use ES384 or RS384")
    if str(header.get("typ", "")).upper() != "JWT":
        raise InvalidClientToken("token header typ must be JWT")
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise InvalidClientToken("token header has no kid")
    return header


def _unverified_issuer(token: str) -> str:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise InvalidClientToken("token payload is not readable") from exc
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise InvalidClientToken("token has no iss")
    return iss


def _inline_key(issuer: TrustedIssuer, kid: str) -> dict[str, Any] | None:
    if issuer.jwks is None:
        return None
    return next((key for key in issuer.jwks["keys"] if key.get("kid") == kid), None)

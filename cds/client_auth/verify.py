"""Verify the CDS client JWT every call carries (CDS Hooks 2.0 §Trusting CDS Clients).

Order of checks, cheapest and least trusting first: header shape (``alg`` from our asymmetric list —
``none`` and HMAC refused, so a public key can never be used as an HMAC secret — ``typ`` JWT, ``kid``
present), the unverified ``iss`` against the allow-list (403), ``jku`` against that issuer's list
(403), the key by ``kid`` (re-fetching the JWK Set once on an unknown kid), then the signature and the
claims ``aud`` (= the URL called), ``exp``, ``iat`` (neither in the future nor older than
``max_age_s``), ``jti`` (required, and replay-checked last so a bad token never burns a jti).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from jwt.algorithms import get_default_algorithms

from cds.client_auth.compact_jws import CompactJws, MalformedJws, parse_compact_jws
from cds.client_auth.jti_replay import JtiClaim, JtiReplayCache
from cds.client_auth.jwks_cache import JwksCache, JwksUnavailable
from cds.client_auth.trusted_issuers import TrustedIssuer, TrustedIssuers

ALLOWED_ALGORITHMS = frozenset({"ES384", "RS384", "ES256", "RS256"})
SIGNATURES = {name: get_default_algorithms()[name] for name in ALLOWED_ALGORITHMS}
"""PyJWT's signature algorithms (raw ECDSA signatures converted to DER, RSASSA-PKCS1-v1_5)."""
KEY_TYPE_FOR = {"ES": "EC", "RS": "RSA"}
REPLAY = "token jti was already used (replay)"


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
        self._keys: dict[tuple[str, str, str], tuple[dict[str, Any], Any]] = {}

    async def verify(self, authorization: str | None, audience: str) -> CdsClient:
        """Raises ``InvalidClientToken`` (401) or ``UntrustedClient`` (403)."""
        client, claim = await self.verify_unclaimed(authorization, audience)
        if not await self.replay.first_use(claim):
            raise InvalidClientToken(REPLAY)
        return client

    async def verify_unclaimed(self, authorization: str | None, audience: str) -> tuple[CdsClient, JtiClaim]:
        """Every check but the replay one: the caller holds the returned claim before it answers.

        The hook path submits the claim with its cards and audit entry, one write per call; whoever
        does so must treat a claim that is not held as ``InvalidClientToken(REPLAY)``.
        """
        jws = _parse(_bearer(authorization))
        header = _checked_header(jws.header)
        alg, kid = header["alg"], header["kid"]
        iss = _unverified_issuer(jws.claims)
        issuer = self.issuers.get(iss)
        if issuer is None:
            raise UntrustedClient("issuer is not in the trusted CDS clients list")
        jwk = await self._find_key(issuer, header)
        if jwk is None:
            raise InvalidClientToken(f"no key with kid {kid!r} for this issuer")
        key = self._public_key(jwk, alg, kid, iss)
        if not SIGNATURES[alg].verify(jws.signing_input, key, jws.signature):
            raise InvalidClientToken("token rejected: signature verification failed")
        claims = self._checked_claims(jws.claims, audience)
        expires_at = datetime.fromtimestamp(float(claims["exp"]) + self.leeway_s, UTC)
        tenant = claims.get("tenant")
        client = CdsClient(
            iss=iss, kid=kid, jti=str(claims["jti"]), tenant=tenant if isinstance(tenant, str) else None
        )
        return client, self.replay.claim_for(iss, client.jti, expires_at)

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

    def _public_key(self, jwk: dict[str, Any], alg: str, kid: str, iss: str) -> Any:
        """The key object for a JWK, built once per issuer, kid and algorithm while the JWK is unchanged."""
        if jwk.get("kty") != KEY_TYPE_FOR[alg[:2]] or jwk.get("alg", alg) != alg:
            raise InvalidClientToken(f"key {kid!r} does not fit algorithm {alg}")
        cached = self._keys.get((iss, kid, alg))
        if cached is not None and cached[0] == jwk:
            return cached[1]
        try:
            # prepare_key checks what the JWK alone does not, e.g. the curve ES384 requires (P-384).
            key = SIGNATURES[alg].prepare_key(jwt.PyJWK(jwk, algorithm=alg).key)
        except jwt.PyJWTError as exc:
            raise InvalidClientToken(f"key {kid!r} cannot be used: {exc}") from exc
        self._keys[(iss, kid, alg)] = (dict(jwk), key)
        return key

    def _checked_claims(self, claims: dict[str, Any], audience: str) -> dict[str, Any]:
        """RFC 7519 §4.1 checks on a payload whose signature has been verified."""
        for name in ("iss", "aud", "exp", "iat", "jti"):
            if name not in claims:
                raise InvalidClientToken(f"token has no {name} claim")
        now = datetime.now(UTC).timestamp()
        exp, iat, nbf = _number(claims, "exp"), _number(claims, "iat"), claims.get("nbf")
        if now >= exp + self.leeway_s:
            raise InvalidClientToken("token expired")
        if nbf is not None and _number(claims, "nbf") > now + self.leeway_s:
            raise InvalidClientToken("token nbf is in the future")
        if iat > now + self.leeway_s:
            raise InvalidClientToken("token iat is in the future")
        if now - iat > self.max_age_s + self.leeway_s:
            raise InvalidClientToken("token iat is too old")
        aud = claims["aud"]
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if audience not in [a for a in audiences if isinstance(a, str)]:
            raise InvalidClientToken("token aud is not this service's URL")
        if not isinstance(claims["jti"], str) or not claims["jti"]:
            raise InvalidClientToken("token jti must be a non-empty string")
        return claims


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidClientToken(f"token {name} must be a NumericDate (a number)")
    return float(value)


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise InvalidClientToken("missing Authorization header")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidClientToken("Authorization header is not a Bearer token")
    return token.strip()


def _parse(token: str) -> CompactJws:
    try:
        return parse_compact_jws(token)
    except MalformedJws as exc:
        raise InvalidClientToken(f"token is not a JWS ({exc})") from exc


def _checked_header(header: dict[str, Any]) -> dict[str, Any]:
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise InvalidClientToken(f"algorithm {alg!r} is refused; use ES384 or RS384")
    if str(header.get("typ", "")).upper() != "JWT":
        raise InvalidClientToken("token header typ must be JWT")
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise InvalidClientToken("token header has no kid")
    if "crit" in header:
        # RFC 7515 §4.1.11: extensions we do not implement must make the token invalid.
        raise InvalidClientToken("token header lists critical extensions (crit); none are supported")
    return header


def _unverified_issuer(claims: dict[str, Any]) -> str:
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise InvalidClientToken("token has no iss")
    return iss


def _inline_key(issuer: TrustedIssuer, kid: str) -> dict[str, Any] | None:
    if issuer.jwks is None:
        return None
    return next((key for key in issuer.jwks["keys"] if key.get("kid") == kid), None)

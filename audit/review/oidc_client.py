"""OpenID Connect sign-in against the hospital IdP: authorization code flow with PKCE (RFC 7636, S256).

The ID token is verified here (signature from the IdP's JWKS, ``iss``, ``aud``, ``exp``, ``nonce``); roles
come from its roles claim, or from UserInfo when the IdP keeps them out of the ID token. An ``iss``
parameter on the authorization response (RFC 9207) must name our issuer, which stops mix-up attacks.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from typing import Any
from urllib.parse import quote_plus, urlencode

import httpx
import jwt

from audit.review.config import OidcConfig
from audit.review.reviewer import Reviewer
from audit.review.roles import roles_from_claim

SIGNING_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]


class OidcError(Exception):
    """Sign-in failed; the message is safe to log (no tokens, no claims)."""


def new_code_verifier() -> str:
    """43+ characters from the unreserved set (RFC 7636 §4.1)."""
    return secrets.token_urlsafe(48)


def code_challenge(verifier: str) -> str:
    """BASE64URL(SHA256(verifier)) without padding (RFC 7636 §4.2, S256)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def client_secret_basic(client_id: str, secret: str) -> str:
    """HTTP Basic credentials of a client: each part form-urlencoded first (RFC 6749 §2.3.1)."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class OidcClient:
    """One relying party of one IdP; discovery and JWKS are fetched lazily and cached."""

    def __init__(self, config: OidcConfig, http: httpx.Client | None = None) -> None:
        self.config = config
        self._issuer = str(config.issuer).rstrip("/")
        self._http = http or httpx.Client(timeout=config.timeout_s)
        self._metadata: dict[str, Any] | None = None
        self._jwks: jwt.PyJWKSet | None = None
        self._lock = threading.Lock()

    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata is None:
                url = self._issuer + "/.well-known/openid-configuration"
                try:
                    response = self._http.get(url)
                    response.raise_for_status()
                    metadata = response.json()
                except (httpx.HTTPError, ValueError) as exc:
                    raise OidcError(f"IdP discovery failed: {type(exc).__name__}") from exc
                if str(metadata.get("issuer", "")).rstrip("/") != self._issuer:
                    raise OidcError("IdP discovery document names another issuer")
                self._metadata = metadata
            return self._metadata

    def authorization_url(self, *, state: str, nonce: str, verifier: str) -> str:
        query = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": str(self.config.redirect_uri),
            "scope": " ".join(self.config.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        return str(self.metadata()["authorization_endpoint"]) + "?" + urlencode(query)

    def check_response_issuer(self, iss: str | None) -> None:
        """RFC 9207: when the IdP says it adds ``iss``, it must be there and be ours."""
        advertised = bool(self.metadata().get("authorization_response_iss_parameter_supported"))
        if iss is None and advertised:
            raise OidcError("authorization response lacks the iss parameter the IdP advertises")
        if iss is not None and iss.rstrip("/") != self._issuer:
            raise OidcError("authorization response comes from another issuer")

    def sign_in(self, *, code: str, verifier: str, nonce: str) -> Reviewer:
        """Redeem ``code`` and return the reviewer named by the verified ID token."""
        tokens = self._redeem(code, verifier)
        claims = self._verify_id_token(str(tokens.get("id_token", "")), nonce)
        roles_value = claims.get(self.config.roles_claim)
        name = claims.get("name")
        if roles_value is None and tokens.get("access_token"):
            info = self._userinfo(str(tokens["access_token"]))
            if info.get("sub") != claims["sub"]:
                raise OidcError("UserInfo subject differs from the ID token subject")
            roles_value = info.get(self.config.roles_claim)
            name = name or info.get("name")
        return Reviewer(
            subject=str(claims["sub"]),
            name=str(name or claims["sub"])[:200],
            roles=roles_from_claim(roles_value),
            via="oidc",
        )

    def _redeem(self, code: str, verifier: str) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": str(self.config.redirect_uri),
            "code_verifier": verifier,
        }
        headers = {}
        if self.config.client_secret is None:
            form["client_id"] = self.config.client_id
        else:
            headers["Authorization"] = client_secret_basic(self.config.client_id, self.config.client_secret)
        try:
            response = self._http.post(str(self.metadata()["token_endpoint"]), data=form, headers=headers)
        except httpx.HTTPError as exc:
            raise OidcError(f"token endpoint unreachable: {type(exc).__name__}") from exc
        if response.status_code != 200:
            error = response.json().get("error", "?") if response.content else "?"
            raise OidcError(f"token endpoint refused the code: HTTP {response.status_code} {error}")
        return dict(response.json())

    def _signing_key(self, kid: str | None) -> jwt.PyJWK:
        for attempt in range(2):
            with self._lock:
                if self._jwks is None or attempt == 1:  # an unknown kid may be a rotated key: refetch
                    try:
                        response = self._http.get(str(self.metadata_unlocked()["jwks_uri"]))
                        response.raise_for_status()
                        self._jwks = jwt.PyJWKSet.from_dict(response.json())
                    except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                        raise OidcError(f"IdP JWKS unavailable: {type(exc).__name__}") from exc
                keys = [k for k in self._jwks.keys if kid is None or k.key_id == kid]
            if keys:
                return keys[0]
        raise OidcError("ID token signed with a key the IdP does not publish")

    def metadata_unlocked(self) -> dict[str, Any]:
        assert self._metadata is not None
        return self._metadata

    def _verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as exc:
            raise OidcError("token response has no valid ID token") from exc
        if header.get("alg") not in SIGNING_ALGORITHMS:
            raise OidcError(f"ID token algorithm {header.get('alg')!r} is not accepted")
        self.metadata()
        key = self._signing_key(header.get("kid"))
        try:
            claims = jwt.decode(
                id_token,
                key.key,
                algorithms=[header["alg"]],
                audience=self.config.client_id,
                issuer=self._issuer,
                leeway=30,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise OidcError(f"ID token rejected: {type(exc).__name__}") from exc
        if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise OidcError("ID token nonce does not match this sign-in")
        return dict(claims)

    def _userinfo(self, access_token: str) -> dict[str, Any]:
        endpoint = self.metadata().get("userinfo_endpoint")
        if not endpoint:
            return {}
        try:
            response = self._http.get(str(endpoint), headers={"Authorization": f"Bearer {access_token}"})
            response.raise_for_status()
            return dict(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcError(f"UserInfo failed: {type(exc).__name__}") from exc

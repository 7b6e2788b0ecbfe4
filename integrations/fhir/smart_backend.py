"""SMART Backend Services: OAuth 2.0 client_credentials with a ``private_key_jwt`` client assertion.

How a worker with no user gets an access token for the EHR's FHIR server (SMART App Launch 2.x,
"Backend Services"): it signs a short-lived JWT (``iss`` = ``sub`` = client id, ``aud`` = token URL,
``exp`` at most five minutes ahead, a fresh ``jti``) with its private key (RS384 or ES384), posts it to
the token endpoint, and sends the access token as a bearer token until shortly before it expires.
``SmartBackendAuth`` is an ``httpx.Auth``, so ``FhirClient(base_url, auth=SmartBackendAuth(...))`` is
all a caller does; tokens are cached per instance and shared safely between threads.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import BaseModel, Field

from integrations.fhir.errors import FhirError, FhirUnavailable

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME_S = 300  # SMART: exp no more than five minutes in the future
Algorithm = Literal["RS384", "ES384"]


class SmartBackendConfig(BaseModel):
    """Registration of Veritrace as a backend client at the EHR's authorisation server."""

    token_url: str
    client_id: str = Field(min_length=1)
    private_key_path: Path
    key_id: str = Field(min_length=1)
    algorithm: Algorithm = "RS384"
    scope: str = "system/Patient.read system/Observation.read system/DiagnosticReport.write"
    jku: str | None = None


class SmartAuthError(FhirError):
    """The token endpoint refused us (``error`` is the OAuth error code, e.g. ``invalid_client``)."""

    def __init__(self, message: str, *, error: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.status = status


class SmartBackendAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <token>``; fetches a new token ``refresh_margin_s`` before expiry,
    and once more if the resource server answers 401 (token revoked or server restarted)."""

    requires_request_body = True  # a request retried after a 401 is sent again with its body

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        private_key_pem: bytes,
        key_id: str,
        algorithm: Algorithm = "RS384",
        scope: str = "system/*.read",
        jku: str | None = None,
        refresh_margin_s: float = 60.0,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if algorithm not in ("RS384", "ES384"):
            raise ValueError(f"algorithm must be RS384 or ES384, got {algorithm!r}")
        if not token_url.startswith(("https://", "http://")):
            raise ValueError(f"token_url must be an http(s) URL, got {token_url!r}")
        self.token_url, self.client_id, self.key_id = token_url, client_id, key_id
        self.algorithm, self.scope, self.jku = algorithm, scope, jku
        self.refresh_margin_s = refresh_margin_s
        self._key = _load_private_key(private_key_pem, algorithm)
        self._http = httpx.Client(timeout=timeout_s, transport=transport)
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self.tokens_fetched = 0

    @classmethod
    def from_config(cls, config: SmartBackendConfig, **kwargs: Any) -> SmartBackendAuth:
        return cls(
            token_url=config.token_url,
            client_id=config.client_id,
            private_key_pem=config.private_key_path.read_bytes(),
            key_id=config.key_id,
            algorithm=config.algorithm,
            scope=config.scope,
            jku=config.jku,
            **kwargs,
        )

    def token(self) -> str:
        """A bearer token valid for at least ``refresh_margin_s`` more seconds."""
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at - self.refresh_margin_s:
                self._token, self._expires_at = self._fetch()
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        response = yield request
        if response.status_code == 401:
            self.invalidate()
            request.headers["Authorization"] = f"Bearer {self.token()}"
            yield request

    def client_assertion(self) -> str:
        """The signed JWT that authenticates us at the token endpoint; single use (fresh ``jti``).

        Its times come from the wall clock, not ``clock`` (which only drives the cache), because the
        token endpoint checks them against its own."""
        now = int(time.time())
        headers: dict[str, Any] = {"kid": self.key_id, "typ": "JWT"}
        if self.jku:
            headers["jku"] = self.jku
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": now + MAX_ASSERTION_LIFETIME_S,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)

    def _fetch(self) -> tuple[str, float]:
        requested_at = self._clock()
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.client_assertion(),
        }
        try:
            response = self._http.post(self.token_url, data=form, headers={"Accept": "application/json"})
        except httpx.TimeoutException as exc:
            raise FhirUnavailable("SMART token endpoint timed out") from exc
        except httpx.TransportError as exc:
            raise FhirUnavailable(f"SMART token endpoint: {type(exc).__name__}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise FhirUnavailable(
                f"SMART token endpoint: HTTP {response.status_code}", status=response.status_code
            )
        body = _json_object(response)
        if response.status_code != 200:
            error = body.get("error") if isinstance(body.get("error"), str) else None
            log.warning("SMART token request refused: HTTP %d %s", response.status_code, error)
            raise SmartAuthError(
                f"SMART token endpoint refused us: HTTP {response.status_code} ({error or 'no error code'})",
                error=error,
                status=response.status_code,
            )
        token, token_type, expires_in = (
            body.get("access_token"),
            body.get("token_type"),
            body.get("expires_in"),
        )
        if not isinstance(token, str) or not token:
            raise SmartAuthError("SMART token response has no access_token")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise SmartAuthError(f"SMART token type must be bearer, got {token_type!r}")
        if not isinstance(expires_in, int | float) or expires_in <= 0:
            raise SmartAuthError(f"SMART token response has no positive expires_in (got {expires_in!r})")
        self.tokens_fetched += 1
        log.info("SMART access token obtained for client %s, valid %d s", self.client_id, int(expires_in))
        return token, requested_at + float(expires_in)

    def close(self) -> None:
        self._http.close()


def discover_token_url(fhir_base_url: str, *, timeout_s: float = 10.0) -> str:
    """``token_endpoint`` from ``[base]/.well-known/smart-configuration``."""
    url = f"{fhir_base_url.rstrip('/')}/.well-known/smart-configuration"
    try:
        response = httpx.get(url, timeout=timeout_s, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise FhirUnavailable(f"SMART configuration: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise SmartAuthError(f"SMART configuration: HTTP {response.status_code}", status=response.status_code)
    endpoint = _json_object(response).get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
        raise SmartAuthError("SMART configuration has no token_endpoint URL")
    return endpoint


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _load_private_key(pem: bytes, algorithm: Algorithm) -> Any:
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError("private key is not an unencrypted PEM private key") from exc
    if algorithm == "RS384" and not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("RS384 needs an RSA private key")
    if algorithm == "ES384" and not (
        isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    ):
        raise ValueError("ES384 needs an EC private key on curve P-384")
    return key


_shared: dict[tuple[Any, ...], SmartBackendAuth] = {}
_shared_lock = threading.Lock()


def shared_smart_auth(config: SmartBackendConfig) -> SmartBackendAuth:
    """One auth per registration per process, so every FhirClient of a worker reuses the cached token
    instead of asking the authorisation server for a new one per task."""
    key = tuple(config.model_dump().values())
    with _shared_lock:
        if key not in _shared:
            _shared[key] = SmartBackendAuth.from_config(config)
        return _shared[key]

"""SMART Backend Services client against real token endpoints on localhost.

One is a small OAuth token endpoint served in-process by ``http.server`` (it verifies our assertions
with the public key and can be told to refuse, fail or revoke); the other is sekmet-fhir's own SMART
token endpoint, checked end to end with FHIR calls.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from integrations.fhir.client import FhirClient
from integrations.fhir.errors import FhirRequestError, FhirUnavailable
from integrations.fhir.server import LocalFhirServer, free_port
from integrations.fhir.smart_backend import (
    ASSERTION_TYPE,
    SmartAuthError,
    SmartBackendAuth,
    SmartBackendConfig,
    discover_token_url,
    shared_smart_auth,
)


@dataclass
class KeyPair:
    algorithm: str
    private_pem: bytes
    public_key: Any

    @classmethod
    def make(cls, algorithm: str) -> KeyPair:
        key: Any = (
            rsa.generate_private_key(65537, 2048)
            if algorithm == "RS384"
            else ec.generate_private_key(ec.SECP384R1())
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(algorithm, pem, key.public_key())

    def jwk(self, kid: str) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.algorithm == "RS384" else ECAlgorithm
        return {**json.loads(algorithm.to_jwk(self.public_key)), "kid": kid, "alg": self.algorithm}


@dataclass
class TokenEndpoint:
    """State of the in-process authorisation + resource server."""

    url: str
    public_key: Any
    client_id: str = "veritrace"
    expires_in: int = 300
    fail_with: int | None = None
    issued: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    revoke_all: bool = False
    seen_jti: set[str] = field(default_factory=set)
    headers: list[dict[str, Any]] = field(default_factory=list)

    def check(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if self.fail_with:
            return self.fail_with, {"error": "temporarily_unavailable"}
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_assertion_type") != ASSERTION_TYPE
        ):
            return 400, {"error": "invalid_request"}
        assertion = form.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion, self.public_key, algorithms=["RS384", "ES384"], audience=self.url,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )  # fmt: skip
        except (jwt.PyJWTError, TypeError, ValueError):  # TypeError: key of another type than alg
            return 401, {"error": "invalid_client"}
        ok = (
            claims["iss"] == claims["sub"] == self.client_id
            and claims["exp"] <= time.time() + 300
            and claims["jti"] not in self.seen_jti
        )
        if not ok:
            return 401, {"error": "invalid_client"}
        self.seen_jti.add(claims["jti"])
        self.headers.append(header)
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append(token)
        return 200, {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "scope": form["scope"],
        }


def _serve(state_holder: list[TokenEndpoint]) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            form = {k: v[0] for k, v in parse_qs(raw).items()}
            self._reply(*state_holder[0].check(form))

        def do_GET(self) -> None:  # a protected resource
            state = state_holder[0]
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if token in state.issued and token not in state.revoked and not state.revoke_all:
                self._reply(200, {"resourceType": "Patient", "id": "p1"})
            else:
                self._reply(
                    401,
                    {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]},
                )

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, server.server_address[1]


@pytest.fixture(params=["RS384", "ES384"])
def keys(request: pytest.FixtureRequest) -> KeyPair:
    return KeyPair.make(request.param)


@pytest.fixture
def endpoint(keys: KeyPair) -> Iterator[TokenEndpoint]:
    holder: list[TokenEndpoint] = []
    server, port = _serve(holder)
    holder.append(TokenEndpoint(url=f"http://127.0.0.1:{port}/token", public_key=keys.public_key))
    yield holder[0]
    server.shutdown()
    server.server_close()


def _auth(endpoint: TokenEndpoint, keys: KeyPair, **kwargs: Any) -> SmartBackendAuth:
    return SmartBackendAuth(
        token_url=endpoint.url, client_id="veritrace", private_key_pem=keys.private_pem, key_id="k1",
        algorithm=keys.algorithm, scope="system/*.read", **kwargs,
    )  # fmt: skip


def test_token_is_fetched_once_and_cached(endpoint: TokenEndpoint, keys: KeyPair) -> None:
    auth = _auth(endpoint, keys)
    assert auth.token() == auth.token() == "tok-1"
    assert endpoint.headers == [{"alg": keys.algorithm, "kid": "k1", "typ": "JWT"}]


def test_token_is_refreshed_before_it_expires(endpoint: TokenEndpoint, keys: KeyPair) -> None:
    now = [1000.0]
    endpoint.expires_in = 120
    auth = _auth(endpoint, keys, refresh_margin_s=60, clock=lambda: now[0])
    assert auth.token() == "tok-1"
    now[0] += 59
    assert auth.token() == "tok-1"
    now[0] += 2  # 61 s later: within the 60 s margin of the 120 s lifetime
    assert auth.token() == "tok-2"
    assert len(endpoint.seen_jti) == 2  # each assertion had a fresh jti


def test_revoked_token_is_replaced_once_on_401(endpoint: TokenEndpoint, keys: KeyPair) -> None:
    base = endpoint.url.removesuffix("/token") + "/fhir"
    with FhirClient(base, auth=_auth(endpoint, keys)) as client:
        assert client.read("Patient", "p1")["id"] == "p1"
        endpoint.revoked.add("tok-1")
        assert client.read("Patient", "p1")["id"] == "p1"
        assert endpoint.issued == ["tok-1", "tok-2"]
        endpoint.revoke_all = True
        with pytest.raises(FhirRequestError) as err:  # a fresh token refused too: one retry, no loop
            client.read("Patient", "p1")
        assert endpoint.issued == ["tok-1", "tok-2", "tok-3"]
        assert err.value.status == 401


def test_unknown_key_is_refused(endpoint: TokenEndpoint) -> None:
    stranger = KeyPair.make("RS384")
    with pytest.raises(SmartAuthError) as err:
        _auth(endpoint, stranger).token()
    assert err.value.error == "invalid_client" and err.value.status == 401


def test_token_endpoint_down_is_retryable(endpoint: TokenEndpoint, keys: KeyPair) -> None:
    endpoint.fail_with = 503
    with pytest.raises(FhirUnavailable):
        _auth(endpoint, keys).token()
    unreachable = SmartBackendAuth(
        token_url=f"http://127.0.0.1:{free_port()}/token", client_id="c", private_key_pem=keys.private_pem,
        key_id="k1", algorithm=keys.algorithm,  # type: ignore[arg-type]
    )  # fmt: skip
    with pytest.raises(FhirUnavailable):
        unreachable.token()


def test_key_must_fit_the_algorithm() -> None:
    ec_key = KeyPair.make("ES384")
    with pytest.raises(ValueError, match="RSA"):
        SmartBackendAuth(
            token_url="http://x/token", client_id="c", private_key_pem=ec_key.private_pem, key_id="k"
        )
    with pytest.raises(ValueError, match="PEM"):
        SmartBackendAuth(token_url="http://x/token", client_id="c", private_key_pem=b"nope", key_id="k")


def test_against_sekmet_smart_server(tmp_path: Path) -> None:
    keys = KeyPair.make("ES384")
    client_reg = {"client_id": "veritrace", "jwks": {"keys": [keys.jwk("k1")]}, "scopes": "system/*.*"}
    with LocalFhirServer(tmp_path / "srv", smart_clients=(client_reg,)) as server:
        assert discover_token_url(server.base_url) == server.token_url
        key_path = tmp_path / "key.pem"
        key_path.write_bytes(keys.private_pem)
        config = SmartBackendConfig(
            token_url=server.token_url, client_id="veritrace", private_key_path=key_path, key_id="k1",
            algorithm="ES384", scope="system/*.read system/*.write",
        )  # fmt: skip
        auth = SmartBackendAuth.from_config(config)
        with FhirClient(server.base_url, auth=auth) as client:
            client.update({"resourceType": "Patient", "id": "smart-1"})
            assert client.read("Patient", "smart-1")["id"] == "smart-1"
        assert auth.tokens_fetched == 1
        with FhirClient(server.base_url) as anonymous, pytest.raises(FhirRequestError) as err:
            anonymous.read("Patient", "smart-1")
        assert err.value.status == 401


def test_config_reads_key_file(tmp_path: Path) -> None:
    keys = KeyPair.make("RS384")
    (tmp_path / "k.pem").write_bytes(keys.private_pem)
    auth = SmartBackendAuth.from_config(
        SmartBackendConfig(
            token_url="https://ehr.test/token", client_id="c", private_key_path=tmp_path / "k.pem", key_id="k"
        )
    )
    claims = jwt.decode(
        auth.client_assertion(), keys.public_key, algorithms=["RS384"], audience="https://ehr.test/token"
    )
    assert claims["iss"] == claims["sub"] == "c"
    assert 0 < claims["exp"] - time.time() <= 300
    assert isinstance(auth, httpx.Auth)


def test_worker_settings_use_smart_backend_with_one_shared_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VERITRACE_FHIR_SMART_* make every worker FhirClient authenticate; tokens are shared per process."""
    from cds.settings import Settings

    keys = KeyPair.make("ES384")
    client_reg = {"client_id": "vt-worker", "jwks": {"keys": [keys.jwk("w1")]}, "scopes": "system/*.*"}
    with LocalFhirServer(tmp_path / "srv", smart_clients=(client_reg,)) as server:
        key_path = tmp_path / "worker.pem"
        key_path.write_bytes(keys.private_pem)
        for name, value in {
            "VERITRACE_FHIR_BASE_URL": server.base_url,
            "VERITRACE_FHIR_SMART_TOKEN_URL": server.token_url,
            "VERITRACE_FHIR_SMART_CLIENT_ID": "vt-worker",
            "VERITRACE_FHIR_SMART_PRIVATE_KEY_FILE": str(key_path),
            "VERITRACE_FHIR_SMART_KEY_ID": "w1",
            "VERITRACE_FHIR_SMART_ALGORITHM": "ES384",
            "VERITRACE_FHIR_SMART_SCOPE": "system/*.read system/*.write",
        }.items():
            monkeypatch.setenv(name, value)
        config = Settings().fhir_config()
        assert config.smart is not None
        with FhirClient.from_config(config) as first:
            first.update({"resourceType": "Patient", "id": "smart-worker-1"})
        with FhirClient.from_config(config) as second:
            assert second.read("Patient", "smart-worker-1")["id"] == "smart-worker-1"
        assert shared_smart_auth(config.smart).tokens_fetched == 1

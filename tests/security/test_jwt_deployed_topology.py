"""The CDS client JWT matrix against the deployed topology: nginx in front of two `veritrace api` processes
on one PostgreSQL database.

`tests/integration/test_cds_jwt.py` runs the matrix against one in-process app. Here every row goes the way
an EHR's call goes in production: TLS to the proxy (nginx with `deploy/proxy/nginx.conf`, templated only
for ports, upstreams and paths; see `deployed_proxy.py`), then to either replica, each a separate OS
process started as `python -m cds.cli api` (as `tests/fault/harness.py` starts them). The API does not
derive `aud` from the Host or X-Forwarded-* headers it is reached with: it compares `aud` with
`VERITRACE_PUBLIC_BASE_URL`, set here to the proxy's public URL, so a token minted for a replica's own
address is refused and a token minted for the public URL is accepted by both replicas.

The replay row is run twice: through the proxy, and with the same token sent straight to replica 1 then
replica 2, whose replay cache is the shared database table. The JWK Set for the jku rows is served by a
real HTTP server in this process; the replicas re-fetch on an unknown kid without a minimum interval
(`VERITRACE_CDS_JWKS_MIN_REFETCH_S=0`) so the rotation row needs no waiting.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cds.client_auth.ehr_signer import EhrTokenSigner
from tests.conftest import free_port
from tests.fault.harness import Deployment
from tests.integration.cds_support import (
    ISSUER,
    JwksServer,
    alg_none_token,
    hook_body,
    hs256_public_key_token,
)
from tests.security.deployed_proxy import RunningProxy, running_proxy

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

SERVICE = "/cds-services/veritrace-patient-view"
JKU_ISSUER = "https://ehr-jku.test.example/"


@dataclass
class Topology:
    proxy: RunningProxy
    replicas: list[str]
    deployment: Deployment
    jwks: JwksServer
    es384: EhrTokenSigner
    rs384: EhrTokenSigner
    # Signs with a key published at the issuer's jku (the rotation rows publish more).
    jku_signer: EhrTokenSigner

    @property
    def aud(self) -> str:
        return self.proxy.public_url + SERVICE


@pytest.fixture
def topology(tmp_path: Path, postgres_url: str) -> Iterator[Topology]:
    with JwksServer().running() as jwks:
        es384 = EhrTokenSigner.generate(ISSUER, alg="ES384")
        rs384 = EhrTokenSigner.generate(ISSUER, alg="RS384")
        jku_signer = EhrTokenSigner.generate(JKU_ISSUER, alg="ES384", kid="2025-key", jku=jwks.url)
        jwks.jwks = jku_signer.jwks()
        issuers = tmp_path / "cds-issuers.json"
        issuers.write_text(
            json.dumps(
                {
                    ISSUER: {"jwks": {"keys": [es384.public_jwk(), rs384.public_jwk()]}},
                    JKU_ISSUER: {"jku": [jwks.url]},
                }
            )
        )
        proxy_port, health_port = free_port(), free_port()
        deployment = Deployment.create(
            tmp_path / "home",
            database_url=postgres_url,
            cds_require_jwt="true",
            cds_issuers_file=str(issuers),
            public_base_url=f"https://127.0.0.1:{proxy_port}",
            cds_jwks_min_refetch_s="0",
        )
        upgraded = deployment.run_cli("db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        ports = [free_port(), free_port()]
        try:
            for number, port in enumerate(ports, start=1):
                deployment.spawn(f"api{number}", "api", api_port=str(port))
            for port in ports:
                deployment.wait_http(f"http://127.0.0.1:{port}/healthz")
            with running_proxy(
                tmp_path / "proxy", upstreams=ports, port=proxy_port, health_port=health_port
            ) as proxy:
                yield Topology(
                    proxy,
                    [f"http://127.0.0.1:{p}" for p in ports],
                    deployment,
                    jwks,
                    es384,
                    rs384,
                    jku_signer,
                )
        finally:
            deployment.stop_all()


def call(client: httpx.Client, base: str, token: str | None) -> httpx.Response:
    body = hook_body(
        "patient-view",
        {"userId": "Practitioner/u1", "patientId": "p1"},
        {"finalReports": None, "imagingStudies": None},
    )
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.post(base + SERVICE, json=body, headers=headers)


def assert_refused(response: httpx.Response, status: int, phrase: str) -> None:
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert phrase in outcome["issue"][0]["diagnostics"], outcome


def test_jwt_matrix_through_the_proxy_and_replay_across_replicas(topology: Topology) -> None:
    aud, now = topology.aud, time.time()
    es384, rs384, jku_signer = topology.es384, topology.rs384, topology.jku_signer
    statuses: list[int] = []
    with httpx.Client(verify=topology.proxy.client_tls, timeout=30) as client:

        def through_proxy(token: str | None) -> httpx.Response:
            response = call(client, topology.proxy.public_url, token)
            statuses.append(response.status_code)
            return response

        refused: list[tuple[str, str, int, str]] = [
            ("expired", es384.token(aud, issued_at=now - 200, lifetime_s=100), 401, "expired"),
            ("future iat", es384.token(aud, issued_at=now + 600), 401, "future"),
            # Minted for a replica's own address, not the public URL the EHR was configured with.
            ("wrong aud", es384.token(topology.replicas[0] + SERVICE), 401, "aud"),
            ("unknown iss", es384.token(aud, claims={"iss": "https://stranger.example/"}), 403, "issuer"),
            (
                "jku not allowed",
                EhrTokenSigner(
                    JKU_ISSUER,
                    jku_signer.key,
                    kid=jku_signer.kid,
                    alg="ES384",
                    jku=topology.jwks.url + "?other",
                ).token(aud),
                403,
                "jku",
            ),
            ("alg none", alg_none_token(es384, aud, jti="none-1"), 401, "'none' is refused"),
            (
                "HS256, public key as secret",
                hs256_public_key_token(rs384, aud, jti="hs-1"),
                401,
                "'HS256' is refused",
            ),
        ]
        for _case, token, status, phrase in refused:
            assert_refused(through_proxy(token), status, phrase)
        for signer in (es384, rs384):  # valid ES384 and RS384, on both replicas (round robin)
            for _ in range(2):
                assert through_proxy(signer.token(aud)).status_code == 200
        hits_before = topology.jwks.hits

        # kid unknown, then rotated in: the EHR publishes its new key, and from then on it is accepted.
        rotated = EhrTokenSigner.generate(JKU_ISSUER, alg="ES384", kid="2026-key", jku=topology.jwks.url)
        assert_refused(through_proxy(rotated.token(aud)), 401, "kid")
        topology.jwks.jwks = {"keys": [jku_signer.public_jwk(), rotated.public_jwk()]}
        for _ in range(2):  # both replicas, each re-fetching once for the new kid
            assert through_proxy(rotated.token(aud)).status_code == 200
        assert through_proxy(jku_signer.token(aud)).status_code == 200  # the old key still valid
        assert topology.jwks.hits > hits_before

        # Replayed jti through the proxy: the second call may land on the other replica.
        token = es384.token(aud)
        assert through_proxy(token).status_code == 200
        assert_refused(through_proxy(token), 401, "replay")

        # The same token sent to replica 1, then straight to replica 2: one replay cache for both.
        token = rs384.token(aud)
        first = call(client, topology.replicas[0], token)
        second = call(client, topology.replicas[1], token)
        statuses += [first.status_code, second.status_code]
        assert first.status_code == 200, first.text
        assert_refused(second, 401, "replay")

    # The proxy spread the calls over both replicas: the matrix ran against the topology, not one process.
    assert topology.proxy.upstreams_used() == {r.removeprefix("http://") for r in topology.replicas}
    # Every call, accepted or refused, from either replica, is in the one ledger with its status.
    topology.deployment.stop_all()  # the replicas flush their batched hook writes on shutdown
    logged = [
        int((e.payload or {})["status"])
        for e in topology.deployment.ledger().iter_entries()
        if e.kind == "cds.hook"
    ]
    assert sorted(logged) == sorted(statuses)

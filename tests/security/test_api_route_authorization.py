"""Every route of the API outside /review, with no credential, each wrong credential and the right one.

The routes are enumerated from the app as deployed with every optional part mounted (built as
`test_injection_probes.py` builds it: review app, SMART viewer, STOW-RS, audit API tokens, /metrics, on
PostgreSQL; here with CDS client JWTs checked), and each must have an entry in `DECISIONS`: a route
added without one fails
`test_every_api_route_has_an_authorization_decision`. The /review routes have their own matrix
(`test_review_authorization.py`).

A refusal must show nothing the route guards (the seeded patient's id and report text, which the
permitted call shows) and write nothing: no table changes, except the one `cds.hook` audit entry a
refused hook call leaves by design (every hook outcome is audited), which names no patient. Credentials
are not interchangeable: an audit token does not open STOW, a STOW token does not open the audit
entries, and a review session or a viewer session opens neither.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response

from audit.keys import ensure_signing_key
from audit.review import Role
from audit.review.gate import SESSION_COOKIE
from cds.client_auth.ehr_signer import EhrTokenSigner
from cds.viewer.launch_state import LaunchStore, PendingLaunch, ViewerSession
from cds.viewer.router import SESSION_HEADER
from cds.viewer.sealed_secrets import SecretSealer
from integrations.store.models import Analysis
from tests.conftest import free_port, fresh_postgres_database
from tests.integration.cds_support import (
    ISSUER,
    PUBLIC_BASE,
    Store,
    alg_none_token,
    hook_body,
    make_store,
    searchset,
    seed_report,
)
from tests.integration.review_seed import sign_in
from tests.security.app_surface import (
    AUDIT_TOKEN,
    STOW_TOKEN,
    VIEWER_ISS,
    build_deployed_app,
    route_table,
    table_counts,
)
from tests.security.deployed_proxy import running_proxy

pytestmark = pytest.mark.postgres

PATIENT = "authz-patient-4417"
SUMMARY = "Authz marker: right lower lobe nodule 8 mm"
GUARDED = (PATIENT, SUMMARY)  # what a refusal must never show
SERVICE = "veritrace-patient-view"
HOOK = f"/cds-services/{SERVICE}"
CITATION = "ev-observation-1"
# A closed local port: every call the viewer makes to the EHR fails at once (502).
CLOSED_PORT_URL = "http://127.0.0.1:9"

Gate = Literal[
    "public", "cds-jwt", "audit-token", "stow-token", "viewer-launch", "viewer-callback", "viewer-session"
]


@dataclass(frozen=True)
class Decision:
    """How a route decides who may call it, and what a permitted call gets in this fixture."""

    gate: Gate
    ok: int = 200


DECISIONS: dict[tuple[str, str], Decision] = {
    # The API's description and liveness: no patient data, open by design.
    ("GET", "/openapi.json"): Decision("public"),
    ("GET", "/docs"): Decision("public"),
    ("GET", "/docs/oauth2-redirect"): Decision("public"),
    ("GET", "/redoc"): Decision("public"),
    ("GET", "/healthz"): Decision("public"),
    # Prometheus text with bounded labels (route templates, known service ids) and store totals, no
    # patient data. Open on the replica, where Prometheus scrapes it; the deployed proxy refuses it on the
    # public listener (`test_metrics_stay_off_the_proxys_public_listener`).
    ("GET", "/metrics"): Decision("public"),
    # CDS Hooks: discovery is public (spec); a call and its feedback need the EHR's signed JWT.
    ("GET", "/cds-services"): Decision("public"),
    ("POST", "/cds-services/{service_id}"): Decision("cds-jwt"),
    ("POST", "/cds-services/{service_id}/feedback"): Decision("cds-jwt"),
    # The ledger: checkpoints, consistency proofs and keys are public so anyone can check the log;
    # entries carry patient references and need an auditor's token.
    ("GET", "/audit/checkpoint"): Decision("public"),
    ("GET", "/audit/consistency"): Decision("public"),
    ("GET", "/audit/public-key"): Decision("public"),
    ("GET", "/audit/entries/{index}"): Decision("audit-token"),
    # STOW-RS: a PACS's token. Past authentication, a part that is not DICOM is refused for itself (409).
    ("POST", "/dicomweb/studies"): Decision("stow-token", ok=409),
    # SMART launches: anyone may start one from an allowed EHR (which then authorises the clinician); the
    # EHR is unreachable here, so a permitted launch or callback ends at 502.
    ("GET", "/viewer/launch"): Decision("viewer-launch", ok=502),
    ("GET", "/viewer/reports/{report_id}"): Decision("viewer-launch", ok=502),
    ("GET", "/viewer/standalone"): Decision("viewer-launch", ok=502),
    ("GET", "/viewer/callback"): Decision("viewer-callback", ok=502),
    # The page shell and its assets carry no data; the page's script loads the report with the session.
    ("GET", "/viewer/app"): Decision("public"),
    ("GET", "/viewer/static/{name}"): Decision("public"),
    ("GET", "/viewer/api/page"): Decision("viewer-session"),
    ("GET", "/viewer/api/evidence/{citation_id}"): Decision("viewer-session", ok=502),
    ("GET", "/viewer/api/images/{instance_id}"): Decision("viewer-session", ok=404),
    ("POST", "/viewer/api/feedback"): Decision("viewer-session"),
}
ROUTE_IDS = [f"{method} {path}" for method, path in DECISIONS]


def routes_of(gate: Gate) -> list[tuple[str, str]]:
    return [route for route, decision in DECISIONS.items() if decision.gate == gate]


def route_ids(gate: Gate) -> list[str]:
    return [f"{method} {path}" for method, path in routes_of(gate)]


@dataclass
class ApiSite:
    app: FastAPI
    store: Store
    client: TestClient
    signer: EhrTokenSigner
    report_id: str
    entry_index: int
    card_uuid: str
    viewer_handle: str
    expired_handle: str
    review_cookie: str
    sealer: SecretSealer


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiSite]:
    with contextmanager(fresh_postgres_database)() as database_url:  # dropped afterwards
        yield from _site(tmp_path_factory.mktemp("api-authz"), database_url)


def _site(tmp: Path, database_url: str) -> Iterator[ApiSite]:
    store = make_store(tmp, database_url)
    report = seed_report(store, patient_id=PATIENT, summary=SUMMARY)
    with store.session_factory.begin() as db:  # one cited FHIR resource, read from the EHR when opened
        analysis = db.get(Analysis, report.analysis_id)
        assert analysis is not None
        analysis.trace = {"evidence": [{"id": CITATION, "resource_type": "Observation", "resource_id": "o1"}]}
    entry = store.ledger.append("test.entry", "security-test", {"n": 1}, patient_ref=f"Patient/{PATIENT}")
    ensure_signing_key(store.ledger.config)  # public checkpoint and key routes answer 200, not 404
    store.ledger.checkpoint()
    signer = EhrTokenSigner.generate(ISSUER)
    app = build_deployed_app(tmp, store, signer)
    client = TestClient(app, base_url=PUBLIC_BASE)  # no lifespan: its shutdown closes the app's HTTP client
    called = client.post(HOOK, json=_hook_call_body(), headers=_bearer(signer.token(PUBLIC_BASE + HOOK)))
    assert called.status_code == 200, called.text
    card_uuid = called.json()["cards"][0]["uuid"]
    # Viewer sessions as the SMART launch leaves them (the launch itself is tested in test_viewer_*).
    sealer = SecretSealer.from_key_or_file(None, tmp / "keys" / "viewer-session.key")
    launches = LaunchStore(store.session_factory, sealer, launch_ttl_s=600)
    handles = []
    for lifetime in (timedelta(hours=1), timedelta(minutes=-1)):  # expired last: a put drops expired rows
        handles.append(secrets.token_urlsafe(32))
        session = ViewerSession(
            handle=handles[-1],
            iss=VIEWER_ISS,
            access_token="ehr-access-token",
            patient_id=PATIENT,
            encounter_id=None,
            user=None,
            scopes=("launch", "patient/*.rs"),
            report_id=report.id,
            card_uuid=card_uuid,
            expires_at=datetime.now(UTC) + lifetime,
        )
        launches.put_session(session)
    admin, _csrf = sign_in(app, Role.ADMIN)
    yield ApiSite(
        app=app,
        store=store,
        client=client,
        signer=signer,
        report_id=report.id,
        entry_index=entry.index,
        card_uuid=card_uuid,
        viewer_handle=handles[0],
        expired_handle=handles[1],
        review_cookie=admin.cookies[SESSION_COOKIE],
        sealer=sealer,
    )
    store.engine.dispose()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _hook_call_body() -> dict[str, Any]:
    # Empty final-report and imaging bundles: no final report overtakes the draft, so it gets a card.
    prefetch = {"finalReports": searchset(), "imagingStudies": searchset()}
    return hook_body("patient-view", {"userId": "Practitioner/u1", "patientId": PATIENT}, prefetch)


def request(
    site: ApiSite,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> Response:
    """One call to a route with a valid body and parameters, and only the credentials in ``headers``."""
    url = path.format(
        service_id=SERVICE,
        report_id=site.report_id,
        index=site.entry_index,
        citation_id=CITATION,
        instance_id=1,
        name="viewer.js",
    )
    defaults: dict[str, dict[str, str]] = {
        "/audit/consistency": {"from": "1", "to": str(site.store.ledger.size())},
        "/viewer/launch": {"iss": VIEWER_ISS, "launch": "launch-1"},
        "/viewer/reports/{report_id}": {"iss": VIEWER_ISS, "launch": "launch-1"},
        "/viewer/standalone": {"report": site.report_id, "iss": VIEWER_ISS},
    }
    query = params if params is not None else defaults.get(path, {})
    options: dict[str, Any] = {"params": query, "headers": dict(headers or {}), "follow_redirects": False}
    if path == "/cds-services/{service_id}":
        options["json"] = _hook_call_body()
    elif path == "/cds-services/{service_id}/feedback":
        item = {"card": site.card_uuid, "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z"}
        options["json"] = {"feedback": [item]}
    elif path == "/viewer/api/feedback":
        options["json"] = {"outcome": "accepted"}
    elif path == "/dicomweb/studies":
        options["headers"]["content-type"] = 'multipart/related; type="application/dicom"; boundary=b1'
        options["content"] = b"--b1\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--b1--\r\n"
    return site.client.request(method, url, **options)


@dataclass(frozen=True)
class Snapshot:
    counts: dict[str, int]
    ledger_size: int


def snapshot(site: ApiSite) -> Snapshot:
    return Snapshot(table_counts(site.store.engine), site.store.ledger.size())


def assert_refused(site: ApiSite, path: str, response: Response, status: int, before: Snapshot) -> None:
    """The refusal's status, nothing guarded in it, nothing written (a hook call's own audit entry aside)."""
    assert response.status_code == status, response.text[:300]
    for guarded in GUARDED:
        assert guarded not in response.text
    after = snapshot(site)
    changed = {name for name in before.counts if after.counts[name] != before.counts[name]}
    if path == "/cds-services/{service_id}":  # every hook outcome is audited, refusals included
        assert after.ledger_size == before.ledger_size + 1
        assert changed <= {name for name in after.counts if name.startswith("audit_")}, changed
        audited = site.store.ledger.entry(before.ledger_size)
        assert audited.kind == "cds.hook" and audited.patient_ref is None
        assert audited.payload is not None and audited.payload["status"] == status
    else:
        assert after.ledger_size == before.ledger_size
        assert changed == set(), changed


def test_every_api_route_has_an_authorization_decision(site: ApiSite) -> None:
    served = set(route_table(site.app))
    assert any(path.startswith("/review/") for _method, path in served), "the review app is mounted"
    api = {(method, path) for method, path in served if not path.startswith("/review")}
    assert api - set(DECISIONS) == set(), "routes without an authorization decision"
    assert set(DECISIONS) - api == set(), "decisions for routes that no longer exist"


@pytest.mark.parametrize(("method", "path"), routes_of("public"), ids=route_ids("public"))
def test_public_route_answers_without_a_credential(site: ApiSite, method: str, path: str) -> None:
    response = request(site, method, path)
    assert response.status_code == DECISIONS[(method, path)].ok, response.text[:300]
    for guarded in GUARDED:
        assert guarded not in response.text


# Every kind of credential the app knows, as a caller would present it.
CREDENTIALS = ("none", "audit-token", "stow-token", "cds-jwt", "viewer-session", "review-session")
CREDENTIAL_GATES: tuple[Gate, ...] = ("cds-jwt", "audit-token", "stow-token", "viewer-session")
BEARER_GATES: tuple[Gate, ...] = ("audit-token", "stow-token")


def credential(site: ApiSite, kind: str, path: str) -> dict[str, str]:
    if kind == "audit-token":
        return _bearer(AUDIT_TOKEN)
    if kind == "stow-token":
        return _bearer(STOW_TOKEN)
    if kind == "cds-jwt":  # signed for a CDS route's own URL: at one, only the kind of credential is wrong
        own = path.format(service_id=SERVICE) if path.startswith("/cds-services/") else HOOK
        return _bearer(site.signer.token(PUBLIC_BASE + own))
    if kind == "viewer-session":
        return {SESSION_HEADER: site.viewer_handle}
    if kind == "review-session":
        return {"Cookie": f"{SESSION_COOKIE}={site.review_cookie}"}
    return {}


CROSS_CASES = [
    pytest.param(method, path, kind, id=f"{method} {path} with {kind}")
    for gate in CREDENTIAL_GATES
    for method, path in routes_of(gate)
    for kind in CREDENTIALS
    if kind != gate
]


@pytest.mark.parametrize(("method", "path", "kind"), CROSS_CASES)
def test_guarded_route_refuses_every_other_credential(
    site: ApiSite, method: str, path: str, kind: str
) -> None:
    """Least privilege across credential kinds: only the route's own kind opens it."""
    headers = credential(site, kind, path)
    gate = DECISIONS[(method, path)].gate
    # A bearer-token route tells a missing token (401) from one it does not accept (403).
    status = 403 if gate in BEARER_GATES and "Authorization" in headers else 401
    before = snapshot(site)
    assert_refused(site, path, request(site, method, path, headers=headers), status, before)


CREDENTIAL_ROUTES = [route for gate in CREDENTIAL_GATES for route in routes_of(gate)]


@pytest.mark.parametrize(
    ("method", "path"), CREDENTIAL_ROUTES, ids=[f"{m} {p}" for m, p in CREDENTIAL_ROUTES]
)
def test_guarded_route_opens_to_its_own_credential(site: ApiSite, method: str, path: str) -> None:
    decision = DECISIONS[(method, path)]
    response = request(site, method, path, headers=credential(site, decision.gate, path))
    assert response.status_code == decision.ok, response.text[:300]


BEARER_ROUTES = [route for gate in BEARER_GATES for route in routes_of(gate)]


@pytest.mark.parametrize("wrong", ["unknown", "truncated", "extended", "basic scheme", "empty"])
@pytest.mark.parametrize(("method", "path"), BEARER_ROUTES, ids=[f"{m} {p}" for m, p in BEARER_ROUTES])
def test_bearer_token_route_refuses_a_wrong_token(site: ApiSite, method: str, path: str, wrong: str) -> None:
    own = {"audit-token": AUDIT_TOKEN, "stow-token": STOW_TOKEN}[DECISIONS[(method, path)].gate]
    authorization, status = {
        "unknown": ("Bearer " + secrets.token_hex(12), 403),
        "truncated": ("Bearer " + own[:-1], 403),
        "extended": ("Bearer " + own + "0", 403),
        "basic scheme": ("Basic " + own, 401),
        "empty": ("Bearer ", 401),
    }[wrong]
    before = snapshot(site)
    response = request(site, method, path, headers={"Authorization": authorization})
    assert_refused(site, path, response, status, before)


def test_the_permitted_calls_show_what_the_refusals_hide(site: ApiSite) -> None:
    """The refusals' "nothing guarded" checks look for text these routes really return when permitted."""
    entry = request(site, "GET", "/audit/entries/{index}", headers=_bearer(AUDIT_TOKEN))
    assert entry.json()["entry"]["patient_ref"] == f"Patient/{PATIENT}"
    page = request(site, "GET", "/viewer/api/page", headers={SESSION_HEADER: site.viewer_handle})
    assert SUMMARY in page.text
    hook = request(site, "POST", "/cds-services/{service_id}", headers=credential(site, "cds-jwt", HOOK))
    assert SUMMARY in hook.text


def _bad_tokens(site: ApiSite, audience: str) -> dict[str, tuple[str, int, str]]:
    """Tokens a CDS client route must refuse: status (401 invalid, 403 untrusted issuer) and why."""
    signer = site.signer
    stranger = EhrTokenSigner.generate(ISSUER)  # the trusted issuer's name, a key it never published
    forger = EhrTokenSigner.generate(ISSUER, kid=signer.kid)  # ... even under the published key's kid
    hour_ago = time.time() - 3600
    return {
        "malformed": ("not.a.jwt", 401, "not a JWS"),
        "unknown key": (stranger.token(audience), 401, "no key with kid"),
        "forged signature": (forger.token(audience), 401, "signature verification failed"),
        "expired": (signer.token(audience, issued_at=hour_ago, lifetime_s=60), 401, "token expired"),
        "wrong audience": (signer.token(PUBLIC_BASE + "/cds-services/other"), 401, "aud is not this service"),
        "alg none": (alg_none_token(signer, audience, jti=str(uuid.uuid4())), 401, "'none' is refused"),
        "untrusted issuer": (
            EhrTokenSigner.generate("https://other-ehr.example/").token(audience),
            403,
            "not in the trusted CDS clients list",
        ),
    }


BAD_TOKEN_NAMES = [
    "malformed",
    "unknown key",
    "forged signature",
    "expired",
    "wrong audience",
    "alg none",
    "untrusted issuer",
]


@pytest.mark.parametrize("bad", BAD_TOKEN_NAMES)
@pytest.mark.parametrize(("method", "path"), routes_of("cds-jwt"), ids=route_ids("cds-jwt"))
def test_cds_client_route_refuses_a_bad_token(site: ApiSite, method: str, path: str, bad: str) -> None:
    audience = PUBLIC_BASE + path.format(service_id=SERVICE)
    tokens = _bad_tokens(site, audience)
    assert set(tokens) == set(BAD_TOKEN_NAMES)
    token, status, reason = tokens[bad]
    before = snapshot(site)
    response = request(site, method, path, headers=_bearer(token))
    assert_refused(site, path, response, status, before)
    assert response.json()["resourceType"] == "OperationOutcome"
    assert reason in response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("handle", ["unknown", "expired", "empty"])
@pytest.mark.parametrize(("method", "path"), routes_of("viewer-session"), ids=route_ids("viewer-session"))
def test_viewer_session_route_refuses_a_dead_handle(
    site: ApiSite, method: str, path: str, handle: str
) -> None:
    value = {"unknown": secrets.token_urlsafe(32), "expired": site.expired_handle, "empty": ""}[handle]
    before = snapshot(site)
    response = request(site, method, path, headers={SESSION_HEADER: value})
    assert_refused(site, path, response, 401, before)
    assert response.json()["error"] == "No viewer session"


@pytest.mark.parametrize(("method", "path"), routes_of("viewer-launch"), ids=route_ids("viewer-launch"))
def test_viewer_launch_refuses_an_issuer_not_allowed(site: ApiSite, method: str, path: str) -> None:
    before = snapshot(site)
    params = {"iss": "https://evil-ehr.example/fhir", "launch": "launch-1", "report": site.report_id}
    response = request(site, method, path, params=params)
    assert_refused(site, path, response, 403, before)  # no launch stored for the callback either
    assert "This EHR may not launch the viewer" in response.text


@pytest.mark.parametrize(("method", "path"), routes_of("viewer-launch"), ids=route_ids("viewer-launch"))
def test_viewer_launch_from_an_allowed_issuer_reaches_the_ehr(site: ApiSite, method: str, path: str) -> None:
    response = request(site, method, path)
    assert response.status_code == DECISIONS[(method, path)].ok, response.text[:300]
    assert "The EHR" in response.text and "could not be reached" in response.text


def _pending_launch(site: ApiSite, ttl_s: float) -> str:
    state = secrets.token_urlsafe(32)
    launch = PendingLaunch(
        state=state,
        iss=VIEWER_ISS,
        launch="launch-1",
        report_id=site.report_id,
        code_verifier="v" * 64,
        authorization_endpoint=f"{CLOSED_PORT_URL}/authorize",
        token_endpoint=f"{CLOSED_PORT_URL}/token",
        auth_server_issuer=None,
    )
    LaunchStore(site.store.session_factory, site.sealer, launch_ttl_s=ttl_s).put_pending(launch)
    return state


def test_viewer_callback_refuses_a_state_without_a_launch(site: ApiSite) -> None:
    path = "/viewer/callback"
    for state in (secrets.token_urlsafe(32), _pending_launch(site, ttl_s=-1)):  # unknown; expired
        before = snapshot(site)
        response = request(site, "GET", path, params={"code": "code-1", "state": state})
        assert_refused(site, path, response, 400, before)
        assert "Unknown or expired launch" in response.text
    before = snapshot(site)
    assert_refused(site, path, request(site, "GET", path, params={"code": "code-1"}), 400, before)
    before = snapshot(site)
    denied = request(site, "GET", path, params={"error": "access_denied", "state": "s"})
    assert_refused(site, path, denied, 401, before)


def test_viewer_callback_redeems_a_launch_once(site: ApiSite) -> None:
    path = "/viewer/callback"
    state = _pending_launch(site, ttl_s=600)
    first = request(site, "GET", path, params={"code": "code-1", "state": state})
    assert first.status_code == DECISIONS[("GET", path)].ok, first.text[:300]  # the token endpoint is down
    for guarded in GUARDED:
        assert guarded not in first.text
    before = snapshot(site)
    replayed = request(site, "GET", path, params={"code": "code-1", "state": state})
    assert_refused(site, path, replayed, 400, before)


@pytest.fixture
def replica(site: ApiSite) -> Iterator[int]:
    """The fixture's app served over HTTP on a local port, as one API replica (no lifespan, as above)."""
    port = free_port()
    config = uvicorn.Config(site.app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_metrics_stay_off_the_proxys_public_listener(replica: int, tmp_path: Path) -> None:
    """`/metrics` is open on a replica for Prometheus; nginx with the deployed config keeps it in."""
    ports = {"port": free_port(), "health_port": free_port()}
    with (
        running_proxy(tmp_path / "proxy", upstreams=[replica], **ports) as proxy,
        httpx.Client(verify=proxy.client_tls) as public,
    ):
        reached = public.get(proxy.public_url + "/cds-services")
        assert reached.status_code == 200  # the proxy does pass the public routes on
        # Spellings nginx normalises to /metrics before it picks a location.
        for spelling in ("/metrics", "//metrics", "/%6Detrics", "/metrics?format=text"):
            response = public.get(proxy.public_url + spelling)
            assert response.status_code == 404, spelling
            assert "veritrace_" not in response.text, spelling
        assert public.head(proxy.public_url + "/metrics").status_code == 404
    direct = httpx.get(f"http://127.0.0.1:{replica}/metrics")
    assert direct.status_code == 200 and "veritrace_" in direct.text

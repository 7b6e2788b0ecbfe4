"""SQL injection and path traversal probes into every input of every route, on PostgreSQL.

The routes are enumerated from the app as deployed with every optional part mounted (review app, SMART
viewer, STOW-RS, audit API tokens, /metrics). Each route's inputs are its declared parameters (path,
query, header, cookie, form fields and every leaf of a JSON body, taken from the route and cross-checked
against the OpenAPI document) plus what it reads itself, which `UNDECLARED` states per route: a route
missing from that table fails the test, so a new route needs a decision about its hidden inputs.

Each probe goes into one input at a time while the others hold valid values (a signed-in admin for the
review app, a live viewer session, the right bearer tokens), so it reaches the code behind the checks.
The API must answer without a 5xx and without echoing database or file internals, and leave every table
as it was except the append-only audit tables (each probe is audited). JSON bodies also get one nested
past the parser's recursion limit.
"""

from __future__ import annotations

import itertools
import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from audit.review.auth_routes import LOGIN_CSRF_COOKIE, OIDC_STATE_COOKIE
from audit.review.gate import CSRF_HEADER, SESSION_COOKIE
from cds.viewer.launch_state import LaunchStore, ViewerSession
from cds.viewer.sealed_secrets import SecretSealer
from integrations.dicom.spool import Spool
from tests.integration.cds_support import PUBLIC_BASE, Store, make_store, seed_report
from tests.integration.review_seed import PASSWORD
from tests.security.app_surface import (
    AUDIT_TOKEN,
    STOW_TOKEN,
    VIEWER_ISS,
    build_deployed_app,
    route_table,
    table_counts,
)

pytestmark = pytest.mark.postgres

SQL_PROBES = [
    "' OR '1'='1",
    "1; DROP TABLE audit_entries; --",
    "1' UNION SELECT payload FROM audit_entries --",
    "'); DELETE FROM reports; --",
    "1 OR 1=1",
]
PATH_PROBES = [
    "../../../../etc/passwd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "....//....//etc/passwd",
    "/etc/passwd",
]
DEEP_JSON = b"[" * 50_000 + b"]" * 50_000
LEAKS = re.compile(r"root:x:0:0|syntax error|psycopg|sqlalchemy|Traceback|UndefinedTable", re.IGNORECASE)
# The append-only ledger (every call is audited) and the JWT replay cache.
APPEND_ONLY = {"audit_entries", "audit_nodes", "audit_payloads", "cds_seen_jti"}
# What valid calls with one probed input write by design: a hook call's cards, a clinician's feedback
# (the probe is then stored as text, as a comment would be).
WRITTEN_BY_DESIGN = APPEND_ONLY | {"cards", "feedback"}
# The viewer answers 502 when the EHR cannot be reached: an upstream failure, not an internal one.
UPSTREAM_ROUTES = {"/viewer/launch", "/viewer/reports/{report_id}", "/viewer/standalone", "/viewer/callback",
                   "/viewer/api/evidence/{citation_id}"}  # fmt: skip

Where = Literal["path", "query", "header", "cookie", "form", "json", "raw-json", "multipart"]


@dataclass(frozen=True)
class Slot:
    """One input of a route: where it travels and its name (a dotted path inside a JSON body)."""

    where: Where
    name: str


# What each route reads beyond its declared parameters. Every route of the app must be listed (an
# empty tuple says "nothing else"); the review app's session cookie and CSRF header are added for every
# /review route by `hidden_inputs`.
UNDECLARED: dict[tuple[str, str], tuple[Slot, ...]] = {
    ("GET", "/openapi.json"): (),
    ("GET", "/docs"): (),
    ("GET", "/docs/oauth2-redirect"): (),
    ("GET", "/redoc"): (),
    ("GET", "/metrics"): (),
    ("GET", "/healthz"): (),
    ("GET", "/cds-services"): (),
    ("POST", "/cds-services/{service_id}"): tuple(
        Slot("raw-json", name)
        for name in (
            "hook",
            "hookInstance",
            "fhirServer",
            "fhirAuthorization.access_token",
            "fhirAuthorization.subject",
            "context.userId",
            "context.patientId",
            "context.encounterId",
            "prefetch.finalReports",
        )
    ),
    ("POST", "/cds-services/{service_id}/feedback"): tuple(
        Slot("raw-json", name)
        for name in (
            "feedback.0.card",
            "feedback.0.outcome",
            "feedback.0.outcomeTimestamp",
            "feedback.0.acceptedSuggestions.0.id",
            "feedback.0.overrideReason.reason.code",
            "feedback.0.overrideReason.userComment",
        )
    ),
    ("GET", "/audit/checkpoint"): (),
    ("GET", "/audit/entries/{index}"): (),
    ("GET", "/audit/consistency"): (),
    ("GET", "/audit/public-key"): (),
    ("POST", "/dicomweb/studies"): (Slot("header", "content-type"), Slot("multipart", "part")),
    ("GET", "/viewer/launch"): (),
    ("GET", "/viewer/reports/{report_id}"): (),
    ("GET", "/viewer/standalone"): (),
    ("GET", "/viewer/callback"): (),
    ("GET", "/viewer/app"): (),
    ("GET", "/viewer/api/page"): (),
    ("GET", "/viewer/api/evidence/{citation_id}"): (),
    ("GET", "/viewer/api/images/{instance_id}"): (),
    ("POST", "/viewer/api/feedback"): tuple(Slot("raw-json", n) for n in ("outcome", "reason", "comment")),
    ("GET", "/viewer/static/{name}"): (),
    ("GET", "/review/login"): (),
    ("GET", "/review/login/oidc"): (),
    ("GET", "/review/auth/callback"): (Slot("query", "state"), Slot("cookie", OIDC_STATE_COOKIE)),
    ("POST", "/review/login/local"): (Slot("cookie", LOGIN_CSRF_COOKIE),),
    ("POST", "/review/logout"): (),
    ("GET", "/review/api/me"): (),
    ("GET", "/review/api/analyses"): (),
    ("POST", "/review/api/analyses/search"): (),
    ("GET", "/review/api/analyses/export.csv"): (),
    ("GET", "/review/api/traces/{analysis_id}"): (),
    ("GET", "/review/api/traces/{analysis_id}/images/{position}"): (),
    ("GET", "/review/api/traces/{analysis_id}/export.fhir.json"): (),
    ("GET", "/review/api/traces/{analysis_id}/export.pdf"): (),
    ("GET", "/review/api/hook-calls"): (),
    ("POST", "/review/api/hook-calls/search"): (),
    ("GET", "/review/api/ledger/checkpoint"): (),
    ("GET", "/review/api/ledger/entries/{index}"): (),
    ("POST", "/review/api/ledger/verify"): (),
    ("GET", "/review/api/ledger/verify/{job_id}"): (),
    ("GET", "/review/api/dashboard"): (),
    ("GET", "/review/api/model-card"): (),
    ("GET", "/review/"): (),
    ("GET", "/review/static/{name}"): (),
    ("POST", "/review/search"): (),
    ("GET", "/review/analyses"): (),
    ("GET", "/review/hook-calls"): (),
    ("GET", "/review/traces/{analysis_id}"): (),
    ("GET", "/review/ledger"): (),
    ("GET", "/review/dashboards"): (),
    ("GET", "/review/model-card"): (),
}


@dataclass
class Site:
    app: FastAPI
    store: Store
    defaults: dict[str, str]
    raw_bodies: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def site(tmp_path: Path, postgres_url: str) -> Iterator[Site]:
    store = make_store(tmp_path, postgres_url)
    report = seed_report(store, patient_id="probe-patient")
    store.ledger.append("test.entry", "security-test", {"n": 1})
    app = build_deployed_app(tmp_path, store, None)
    # A viewer session as the SMART launch leaves it (the launch itself is tested in test_viewer_*).
    handle = secrets.token_urlsafe(32)
    sealer = SecretSealer.from_key_or_file(None, tmp_path / "keys" / "viewer-session.key")
    session = ViewerSession(
        handle=handle,
        iss=VIEWER_ISS,
        access_token="t",
        patient_id="probe-patient",
        encounter_id=None,
        user=None,
        scopes=("launch",),
        report_id=report.id,
        card_uuid=None,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    LaunchStore(store.session_factory, sealer, launch_ttl_s=600).put_session(session)
    client = TestClient(
        app, base_url=PUBLIC_BASE
    )  # no lifespan: its shutdown would close the app's HTTP client
    login = client.get("/review/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
    assert token is not None
    signed_in = client.post(
        "/review/login/local",
        data={"username": "admin", "password": PASSWORD, "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert signed_in.status_code == 303
    csrf = re.search(r'data-csrf="([^"]+)"', client.get("/review/model-card").text)
    assert csrf is not None
    session_cookie = client.cookies[SESSION_COOKIE]
    defaults = {
        # path parameters
        "service_id": "veritrace-patient-view",
        "analysis_id": report.analysis_id,
        "report_id": report.id,
        "index": "0",
        "position": "0",
        "job_id": "no-such-job",
        "citation_id": "img:1.2.3:0",
        "instance_id": "1",
        # query parameters a route requires
        "first": "1",
        "second": "1",
        "iss": VIEWER_ISS,
        "launch": "launch-1",
        # what identifies the caller
        f"cookie:{SESSION_COOKIE}": session_cookie,
        f"header:{CSRF_HEADER}": csrf.group(1),
        "form:csrf_token": csrf.group(1),
        "form:username": "admin",
        "form:password": PASSWORD,
        "header:x-viewer-session": handle,
    }
    yield Site(app, store, defaults)
    store.engine.dispose()


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref` (into the document's components) and `anyOf` (its first non-null option)."""
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    options = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    return _resolve(options[0], spec) if options else schema


def json_leaves(schema: dict[str, Any], spec: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every scalar leaf of a JSON body schema (lists: their first item)."""
    schema = _resolve(schema, spec)
    if schema.get("type") == "object" or "properties" in schema:
        return [
            leaf
            for name, child in schema.get("properties", {}).items()
            for leaf in json_leaves(child, spec, f"{prefix}{name}.")
        ]
    if schema.get("type") == "array":
        return json_leaves(schema.get("items", {}), spec, f"{prefix}0.")
    return [prefix.rstrip(".")]


def declared_inputs(method: str, path: str, route: APIRoute | Route, spec: dict[str, Any]) -> list[Slot]:
    """The route's declared parameters, checked against what the OpenAPI document says of it."""
    if not isinstance(route, APIRoute):
        return []
    dependants, slots = [route.dependant], []
    while dependants:  # the route's own parameters, then those of its dependencies
        dependant = dependants.pop()
        dependants += dependant.dependencies
        slots += [Slot("path", p.alias) for p in dependant.path_params]
        slots += [Slot("query", p.alias) for p in dependant.query_params]
        slots += [Slot("header", p.alias.lower()) for p in dependant.header_params]
        slots += [Slot("cookie", p.alias) for p in dependant.cookie_params]
    dependant = route.dependant
    operation = spec["paths"].get(path, {}).get(method.lower()) if route.include_in_schema else None
    body = (operation or {}).get("requestBody", {}).get("content", {})
    if "application/json" in body:
        slots += [Slot("json", leaf) for leaf in json_leaves(body["application/json"]["schema"], spec)]
    elif dependant.body_params:
        slots += [Slot("form", p.alias) for p in dependant.body_params]
    if operation is not None:
        documented = {Slot(p["in"], p["name"].lower() if p["in"] == "header" else p["name"])
                      for p in operation.get("parameters", [])}  # fmt: skip
        assert documented <= set(slots), (method, path, documented - set(slots))
        if "application/x-www-form-urlencoded" in body:
            schema = _resolve(body["application/x-www-form-urlencoded"]["schema"], spec)
            assert {Slot("form", n) for n in schema["properties"]} == {s for s in slots if s.where == "form"}
    return slots


def hidden_inputs(method: str, path: str) -> list[Slot]:
    slots = list(UNDECLARED[(method, path)])
    if path.startswith("/review"):
        slots.append(Slot("cookie", SESSION_COOKIE))
        if method == "POST":
            slots.append(Slot("header", CSRF_HEADER))
    return slots


def _set(body: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    parts = dotted.split(".")
    node: Any = body
    for part, following in itertools.pairwise(parts):
        key: Any = int(part) if part.isdigit() else part
        child: Any = [] if following.isdigit() else {}
        if isinstance(node, list):
            while len(node) <= key:
                node.append(child)
            node = node[key]
        else:
            node = node.setdefault(key, child)
    last = parts[-1]
    if isinstance(node, list):
        node.append(value)
    else:
        node[last] = value
    return body


def _raw_body(method: str, path: str) -> dict[str, Any] | None:
    """A valid body for the routes that read their JSON themselves; None for the others."""
    if (method, path) == ("POST", "/cds-services/{service_id}"):
        context = {"userId": "Practitioner/1", "patientId": "probe-patient"}
        prefetch = {"finalReports": None, "imagingStudies": None}
        return {"hook": "patient-view", "hookInstance": "d1a2e3f4", "context": context, "prefetch": prefetch}
    if (method, path) == ("POST", "/cds-services/{service_id}/feedback"):
        item = {
            "card": str(uuid.UUID(int=0)),
            "outcome": "accepted",
            "outcomeTimestamp": "2026-01-01T00:00:00Z",
        }
        return {"feedback": [item]}
    if (method, path) == ("POST", "/viewer/api/feedback"):
        return {"outcome": "overridden", "reason": "not-relevant", "comment": "probe"}
    return None


def send(client: TestClient, site: Site, method: str, path: str, slots: list[Slot], probed: Slot | None,
         probe: str) -> Any:  # fmt: skip
    """One request: `probe` in the `probed` input, valid values (or nothing) in the others."""
    defaults = site.defaults

    def value(slot: Slot) -> str | None:
        if slot == probed:
            return probe
        return defaults.get(f"{slot.where}:{slot.name}", defaults.get(slot.name))

    url = path
    query: dict[str, str] = {}
    headers: dict[str, str] = {}
    cookies: list[str] = []
    form: dict[str, str] = {}
    body: dict[str, Any] | None = None
    raw = _raw_body(method, path)
    for slot in slots:
        given = value(slot)
        if slot.where == "path":
            url = url.replace("{" + slot.name + "}", quote(given or "x", safe=""))
        elif given is None:
            continue
        elif slot.where == "query":
            query[slot.name] = given
        elif slot.where == "header":
            bearer = slot.name == "authorization"
            headers[slot.name] = f"Bearer {given}" if bearer and slot == probed else given
        elif slot.where == "cookie":
            cookies.append(f"{slot.name}={quote(given, safe='')}")
        elif slot.where == "form":
            form[slot.name] = given
        elif slot.where in ("json", "raw-json") and slot == probed:
            if raw is not None:  # into a valid body, so the probe is what fails (if anything does)
                raw = _set(raw, slot.name, given)
            else:
                body = _set(body or {}, slot.name, given)
    if path.startswith("/audit/entries") or path.startswith("/audit/consistency"):
        headers.setdefault("authorization", f"Bearer {AUDIT_TOKEN}")
    if cookies:
        headers["cookie"] = "; ".join(cookies)
    if path == "/dicomweb/studies":
        headers.setdefault("authorization", f"Bearer {STOW_TOKEN}")
        part = probe.encode() if probed == Slot("multipart", "part") else b"not dicom"
        content_type = headers.pop("content-type", 'multipart/related; type="application/dicom"; boundary=b1')
        payload = b"--b1\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n--b1--\r\n"
        return client.request(method, url, params=query, headers={**headers, "content-type": content_type},
                              content=payload)  # fmt: skip
    if form:
        return client.request(method, url, params=query, headers=headers, data=form, follow_redirects=False)
    if raw is not None:
        return client.request(method, url, params=query, headers=headers, json=raw, follow_redirects=False)
    if method == "POST" and body is None and path.startswith("/review/api") and path.endswith("search"):
        body = {}
    return client.request(method, url, params=query, headers=headers, json=body, follow_redirects=False)


def test_every_input_of_every_route_resists_injection_and_traversal(site: Site) -> None:
    app, spec = site.app, site.app.openapi()
    routes = route_table(app)
    assert set(routes) == set(UNDECLARED), (
        f"routes without a hidden-input decision: {sorted(set(routes) - set(UNDECLARED))}; "
        f"decisions for routes that are gone: {sorted(set(UNDECLARED) - set(routes))}"
    )
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert documented <= set(routes)
    inputs = {key: declared_inputs(*key, route, spec) + hidden_inputs(*key) for key, route in routes.items()}
    before = table_counts(site.store.engine)
    sent = 0
    # Signing out ends the session the other review probes use: that route goes last.
    order = sorted(inputs, key=lambda key: (key == ("POST", "/review/logout"), key))
    with TestClient(app, base_url=PUBLIC_BASE) as client:
        for method, path in order:
            slots = inputs[(method, path)]
            if path == "/review/logout":  # the probes above ran signed in
                assert send(
                    client, site, "GET", "/review/api/me", [Slot("cookie", SESSION_COOKIE)], None, ""
                ).is_success
            for slot in slots:
                for probe in SQL_PROBES + PATH_PROBES:
                    response = send(client, site, method, path, slots, slot, probe)
                    sent += 1
                    where = (method, path, slot, probe, response.status_code, response.text[:300])
                    upstream = response.status_code == 502 and path in UPSTREAM_ROUTES
                    assert response.status_code < 500 or upstream, where
                    assert not LEAKS.search(response.text), where
            if any(s.where in ("json", "raw-json") for s in slots):
                identity = {
                    "content-type": "application/json",
                    "cookie": f"{SESSION_COOKIE}={site.defaults[f'cookie:{SESSION_COOKIE}']}",
                    CSRF_HEADER: site.defaults[f"header:{CSRF_HEADER}"],
                    "x-viewer-session": site.defaults["header:x-viewer-session"],
                }
                url = path.format(**site.defaults)
                response = client.request(method, url, content=DEEP_JSON, headers=identity)
                assert response.status_code in {400, 422}, (
                    method,
                    path,
                    "deeply nested JSON",
                    response.text[:300],
                )
        # Traversal in the raw URL as well, outside any declared parameter.
        for probe in PATH_PROBES:
            for prefix in ("/", "/review/static/", "/viewer/static/", "/cds-services/", "/audit/entries/"):
                response = client.get(prefix + probe)
                assert response.status_code in {400, 401, 403, 404, 405, 422}, (
                    prefix,
                    probe,
                    response.status_code,
                )
                assert not LEAKS.search(response.text)
    slots_total = sum(len(slots) for slots in inputs.values())
    assert sent == slots_total * len(SQL_PROBES + PATH_PROBES) and slots_total > 100
    after = table_counts(site.store.engine)
    assert set(after) == set(before), "a table appeared or disappeared"
    # No probe deleted anything; the one session that ended is the admin's, signed out by the last route.
    shrunk = {name: after[name] - before[name] for name in before if after[name] < before[name]}
    assert shrunk == {"audit_review_sessions": -1}, shrunk
    grown = {name for name in before if after[name] > before[name]}
    assert grown <= WRITTEN_BY_DESIGN, grown


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_ref_of_the_openapi_document_resolves(site: Site) -> None:
    """The enumeration above reads bodies from the document; so do clients generated from it."""
    spec = site.app.openapi()
    refs = set(_refs(spec))
    assert refs and all(ref.startswith("#/components/schemas/") for ref in refs), refs
    assert {ref.rsplit("/", 1)[1] for ref in refs} <= set(spec["components"]["schemas"])


@pytest.mark.parametrize(
    "probe", ["../../../../etc/passwd", "objects/../../outside.dcm", "/etc/passwd", "objects/../../../tmp/x"]
)
def test_spool_paths_cannot_escape_the_root(tmp_path: Path, probe: str) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    with pytest.raises(ValueError, match="escapes the spool root"):
        spool.absolute(probe)

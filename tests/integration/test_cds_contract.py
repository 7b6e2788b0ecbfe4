"""Contract tests: every endpoint's responses checked against the CDS Hooks 2.0 rules.

The validator below is written from the specification text, independently of ``cds.cards`` (checking
our pydantic models against themselves would prove nothing). It runs over discovery, every service's
cards, feedback, and every error body.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from cds_support import (
    ISSUER,
    PUBLIC_BASE,
    Store,
    build_app,
    hook_body,
    make_store,
    searchset,
    seed_report,
)
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text

from cds.client_auth.ehr_signer import EhrTokenSigner
from integrations.store.models import Feedback

HOOKS = {"patient-view", "order-select", "order-sign", "encounter-discharge"}


# ------------------------------------------------------------------ the spec's rules, as a validator
def _non_empty(value: Any, where: str) -> None:
    assert value is not None, f"{where}: null is not allowed"
    assert value not in ("", [], {}), f"{where}: empty values are not allowed"


def _walk_no_nulls(value: Any, where: str) -> None:
    """Spec §Null and empty JSON elements: nothing null or empty except the cards array."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("resource", "extension"):
                continue
            _non_empty(item, f"{where}.{key}")
            _walk_no_nulls(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk_no_nulls(item, f"{where}[{i}]")


def _absolute(url: str, where: str) -> None:
    parts = urlsplit(url)
    assert parts.scheme in ("http", "https") and parts.netloc, f"{where}: not an absolute URL: {url}"


def _coding(coding: Any, where: str, *, display_required: bool = False) -> None:
    assert isinstance(coding, dict) and isinstance(coding.get("code"), str), f"{where}: Coding needs code"
    if display_required:
        assert isinstance(coding.get("display"), str) and coding["display"], f"{where}: display required"


def validate_discovery(body: Any) -> None:
    assert set(body) == {"services"}
    for i, service in enumerate(body["services"]):
        where = f"services[{i}]"
        for field in ("hook", "description", "id"):
            assert isinstance(service.get(field), str) and service[field], f"{where}.{field} required"
        assert set(service) <= {
            "hook",
            "title",
            "description",
            "id",
            "prefetch",
            "usageRequirements",
            "extension",
        }
        for key, template in service.get("prefetch", {}).items():
            assert (isinstance(key, str) and isinstance(template, str) and "?" in template) or "/" in template
        _walk_no_nulls(service, where)


def validate_action(action: Any, where: str) -> None:
    assert action["type"] in ("create", "update", "delete"), where
    assert isinstance(action.get("description"), str) and action["description"], where
    if action["type"] in ("create", "update"):
        assert isinstance(action.get("resource"), dict) and "resourceType" in action["resource"], where
    else:
        assert isinstance(action.get("resourceId"), str) and "/" in action["resourceId"], where


def validate_card(card: Any, where: str) -> None:
    allowed = {
        "uuid",
        "summary",
        "detail",
        "indicator",
        "source",
        "suggestions",
        "selectionBehavior",
        "overrideReasons",
        "links",
        "extension",
    }
    assert set(card) <= allowed, f"{where}: unknown members {set(card) - allowed}"
    assert isinstance(card["summary"], str) and 0 < len(card["summary"]) < 140, f"{where}.summary"
    assert card["indicator"] in ("info", "warning", "critical"), f"{where}.indicator"
    assert isinstance(card["source"].get("label"), str) and card["source"]["label"], f"{where}.source.label"
    for field in ("url", "icon"):
        if field in card["source"]:
            _absolute(card["source"][field], f"{where}.source.{field}")
    if "topic" in card["source"]:
        _coding(card["source"]["topic"], f"{where}.source.topic")
    uuid.UUID(card["uuid"])  # we always send one: feedback needs it
    if card.get("suggestions"):
        assert card.get("selectionBehavior") in ("at-most-one", "any"), f"{where}: selectionBehavior required"
        for j, suggestion in enumerate(card["suggestions"]):
            assert isinstance(suggestion.get("label"), str) and suggestion["label"]
            uuid.UUID(suggestion["uuid"])
            for k, action in enumerate(suggestion.get("actions", [])):
                validate_action(action, f"{where}.suggestions[{j}].actions[{k}]")
    else:
        assert "selectionBehavior" not in card
    for j, reason in enumerate(card.get("overrideReasons", [])):
        _coding(reason, f"{where}.overrideReasons[{j}]", display_required=True)
    for j, link in enumerate(card.get("links", [])):
        assert isinstance(link.get("label"), str) and link["label"]
        _absolute(link["url"], f"{where}.links[{j}].url")
        assert link["type"] in ("absolute", "smart")
        assert "appContext" not in link or link["type"] == "smart"
        assert isinstance(link.get("appContext", ""), str), f"{where}.links[{j}].appContext is a string"
    _walk_no_nulls(card, where)


def validate_service_response(body: Any) -> None:
    assert set(body) <= {"cards", "systemActions"} and isinstance(body["cards"], list)
    for i, card in enumerate(body["cards"]):
        validate_card(card, f"cards[{i}]")
    for i, action in enumerate(body.get("systemActions", [])):
        validate_action(action, f"systemActions[{i}]")


def validate_operation_outcome(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"] and all(
        i["severity"] in ("fatal", "error", "warning", "information") and i["code"] for i in body["issue"]
    )


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path)


@pytest.fixture
def signer() -> EhrTokenSigner:
    return EhrTokenSigner.generate(ISSUER, alg="RS384")


@pytest.fixture
def client(tmp_path: Path, store: Store, signer: EhrTokenSigner) -> Iterator[TestClient]:
    with TestClient(
        build_app(tmp_path, store, signer, cors_origins=["https://sandbox.cds-hooks.org"])
    ) as test_client:
        yield test_client


def _post(
    client: TestClient, signer: EhrTokenSigner, path: str, body: Any, *, raw: bytes | None = None
) -> httpx.Response:
    headers = {
        "Authorization": f"Bearer {signer.token(PUBLIC_BASE + path)}",
        "Content-Type": "application/json",
    }
    if raw is not None:
        return client.post(path, content=raw, headers=headers)
    return client.post(path, json=body, headers=headers)


def _order_body(pid: str, hook: str) -> dict[str, Any]:
    draft = {
        "resourceType": "ServiceRequest",
        "id": "ct1",
        "status": "draft",
        "intent": "order",
        "code": {"text": "CT abdomen with contrast"},
    }
    context: dict[str, Any] = {
        "userId": "Practitioner/u1",
        "patientId": pid,
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]},
    }
    if hook == "order-select":
        context["selections"] = ["ServiceRequest/ct1"]
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "a1",
        "code": {"text": "Iodinated contrast media"},
        "criticality": "high",
    }
    prefetch = {
        "patient": {"resourceType": "Patient", "id": pid, "gender": "female"},
        "allergies": searchset(allergy),
        "renalLabs": None,
        "pregnancy": None,
        "recentImaging": None,
    }
    return hook_body(hook, context, prefetch)


# ------------------------------------------------------------------ discovery
def test_discovery_lists_every_service_per_spec(client: TestClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    body = response.json()
    validate_discovery(body)
    assert {s["hook"] for s in body["services"]} == HOOKS
    for service in body["services"]:
        assert "{{context.patientId}}" in "".join(service["prefetch"].values())
        assert "JWT" in service["usageRequirements"]


# ------------------------------------------------------------------ services
def test_every_service_answers_spec_valid_cards(
    client: TestClient, signer: EhrTokenSigner, store: Store
) -> None:
    seed_report(
        store,
        patient_id="pc",
        severity="critical",
        untrained=True,
        signals=[{"kind": "safety", "text": "Retained foreign body"}],
    )
    view_prefetch = {"finalReports": searchset(), "imagingStudies": None}
    calls = {
        "veritrace-patient-view": hook_body(
            "patient-view", {"userId": "Practitioner/u1", "patientId": "pc"}, view_prefetch
        ),
        "veritrace-imaging-order-select": _order_body("pc", "order-select"),
        "veritrace-imaging-order-sign": _order_body("pc", "order-sign"),
        "veritrace-encounter-discharge": hook_body(
            "encounter-discharge",
            {"userId": "Practitioner/u1", "patientId": "pc", "encounterId": "e1"},
            view_prefetch,
        ),
    }
    for service_id, body in calls.items():
        response = _post(client, signer, f"/cds-services/{service_id}", body)
        assert response.status_code == 200, (service_id, response.text)
        validate_service_response(response.json())
        assert response.json()["cards"], service_id


def test_patient_view_with_the_viewer_registered_answers_spec_valid_smart_links(
    tmp_path: Path, signer: EhrTokenSigner, store: Store
) -> None:
    report = seed_report(store, patient_id="ps", signals=[{"kind": "rare-disease", "text": "Possible LAM"}])
    app = build_app(
        tmp_path,
        store,
        signer,
        viewer_client_id="veritrace-viewer",
        viewer_client_secret="not-used-here",
        viewer_allowed_issuers=["https://ehr.test.example/fhir"],
    )
    body = hook_body(
        "patient-view",
        {"userId": "Practitioner/u1", "patientId": "ps"},
        {"finalReports": searchset(), "imagingStudies": searchset()},
    )
    with TestClient(app) as client:
        response = _post(client, signer, "/cds-services/veritrace-patient-view", body)
    assert response.status_code == 200, response.text
    validate_service_response(response.json())
    links = [link for card in response.json()["cards"] for link in card["links"]]
    assert len(links) == 2 and {link["type"] for link in links} == {"smart"}
    assert {link["appContext"] for link in links} == {f'{{"reportId":"{report.id}"}}'}


def test_encounter_discharge_with_the_viewer_registered_links_a_smart_launch(
    tmp_path: Path, signer: EhrTokenSigner, store: Store
) -> None:
    """The discharge card opens the same viewer launch as the patient-view card."""
    report = seed_report(store, patient_id="pds", severity="minor")
    app = build_app(
        tmp_path,
        store,
        signer,
        viewer_client_id="veritrace-viewer",
        viewer_client_secret="not-used-here",
        viewer_allowed_issuers=["https://ehr.test.example/fhir"],
    )
    body = hook_body(
        "encounter-discharge",
        {"userId": "Practitioner/u1", "patientId": "pds", "encounterId": "e1"},
        {"finalReports": searchset(), "imagingStudies": searchset()},
    )
    with TestClient(app) as client:
        response = _post(client, signer, "/cds-services/veritrace-encounter-discharge", body)
    assert response.status_code == 200, response.text
    validate_service_response(response.json())
    (card,) = response.json()["cards"]
    assert card["links"] == [
        {
            "label": "Open the draft report",
            "url": f"{PUBLIC_BASE}/viewer/reports/{report.id}",
            "type": "smart",
            "appContext": f'{{"reportId":"{report.id}"}}',
        }
    ]


def test_no_guidance_is_an_empty_cards_array(client: TestClient, signer: EhrTokenSigner) -> None:
    response = _post(
        client,
        signer,
        "/cds-services/veritrace-patient-view",
        hook_body(
            "patient-view",
            {"userId": "Practitioner/u1", "patientId": "nobody"},
            {"finalReports": None, "imagingStudies": None},
        ),
    )
    assert response.json() == {"cards": []}


@pytest.mark.parametrize(
    ("case", "status", "phrase"),
    [
        ("malformed-json", 400, "not valid JSON"),
        ("json-array", 400, "JSON object"),
        ("missing-hookInstance", 400, "hookInstance"),
        ("hook-of-another-service", 400, "answers hook"),
        ("missing-patientId", 400, "context.patientId"),
        ("order-select-without-selections", 400, "context.selections"),
        ("draftOrders-not-a-bundle", 400, "draftOrders"),
        ("authorization-without-server", 400, "fhirServer is required"),
        ("unknown-service", 404, "no CDS service"),
    ],
)
def test_errors_are_operation_outcomes(
    client: TestClient, signer: EhrTokenSigner, store: Store, case: str, status: int, phrase: str
) -> None:
    view = "/cds-services/veritrace-patient-view"
    select_path = "/cds-services/veritrace-imaging-order-select"
    good = hook_body(
        "patient-view",
        {"userId": "Practitioner/u1", "patientId": "p"},
        {"finalReports": None, "imagingStudies": None},
    )
    order = _order_body("p", "order-select")
    if case == "malformed-json":
        response = _post(client, signer, view, None, raw=b'{"hook": "patient-view",')
    elif case == "json-array":
        response = _post(client, signer, view, None, raw=b"[]")
    elif case == "missing-hookInstance":
        response = _post(client, signer, view, {k: v for k, v in good.items() if k != "hookInstance"})
    elif case == "hook-of-another-service":
        response = _post(client, signer, view, {**good, "hook": "order-sign"})
    elif case == "missing-patientId":
        response = _post(client, signer, view, {**good, "context": {"userId": "Practitioner/u1"}})
    elif case == "order-select-without-selections":
        order["context"].pop("selections")
        response = _post(client, signer, select_path, order)
    elif case == "draftOrders-not-a-bundle":
        order["context"]["draftOrders"] = {"resourceType": "ServiceRequest"}
        response = _post(client, signer, select_path, order)
    elif case == "authorization-without-server":
        response = _post(
            client, signer, view, {**good, "fhirAuthorization": {"access_token": "t", "token_type": "Bearer"}}
        )
    else:
        response = _post(client, signer, "/cds-services/no-such-service", good)
    validate_operation_outcome(response, status)
    assert phrase in response.json()["issue"][0]["diagnostics"]
    assert "Practitioner/u1" not in response.text  # nothing of the request echoed back
    entry = store.ledger.entry(store.ledger.size() - 1)
    assert entry.kind == "cds.hook" and entry.payload["status"] == status


def test_unknown_route_and_method_are_operation_outcomes(client: TestClient) -> None:
    validate_operation_outcome(client.get("/nothing-here"), 404)
    validate_operation_outcome(client.put("/cds-services"), 405)


def test_cors_preflight_for_a_configured_browser_client(client: TestClient) -> None:
    response = client.options(
        "/cds-services/veritrace-patient-view",
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://sandbox.cds-hooks.org"
    other = client.options(
        "/cds-services", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in other.headers


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


# ------------------------------------------------------------------ feedback
def _cards(
    client: TestClient, signer: EhrTokenSigner, path: str, body: dict[str, Any]
) -> list[dict[str, Any]]:
    response = _post(client, signer, path, body)
    assert response.status_code == 200, response.text
    return list(response.json()["cards"])


def test_feedback_accepted_and_overridden_is_stored_and_audited(
    client: TestClient, signer: EhrTokenSigner, store: Store
) -> None:
    order_path = "/cds-services/veritrace-imaging-order-sign"
    card = _cards(client, signer, order_path, _order_body("pf", "order-sign"))[0]
    suggestion = card["suggestions"][0]["uuid"]
    when = datetime.now(UTC).isoformat()
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": suggestion}],
                "outcomeTimestamp": when,
            },
            {
                "card": f"urn:uuid:{card['uuid']}",
                "outcome": "overridden",
                "overrideReason": {
                    "reason": card["overrideReasons"][0],
                    "userComment": "Patient Jane Doe premedicated",
                },
                "outcomeTimestamp": when,
            },
        ]
    }
    response = _post(client, signer, order_path + "/feedback", feedback)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 2}
    with store.session_factory() as session:
        rows = session.scalars(select(Feedback).order_by(Feedback.id)).all()
    assert [(r.card_uuid, r.outcome) for r in rows] == [
        (card["uuid"], "accepted"),
        (card["uuid"], "overridden"),
    ]
    assert rows[0].accepted_suggestions == [suggestion]
    assert (
        rows[1].override_reason is not None
        and rows[1].override_reason["userComment"] == "Patient Jane Doe premedicated"
    )
    entries = [store.ledger.entry(i) for i in range(store.ledger.size() - 2, store.ledger.size())]
    assert [e.kind for e in entries] == ["cds.feedback", "cds.feedback"]
    assert entries[0].payload["acceptedSuggestions"] == [suggestion]
    assert entries[1].payload["overrideReason"] == card["overrideReasons"][0]["code"]
    assert entries[1].payload["userComment"] is True
    assert "Jane" not in str([e.payload for e in entries])
    assert entries[0].patient_ref == "Patient/pf"


@pytest.mark.parametrize(
    ("mutate", "phrase"),
    [
        (lambda item: item.update(outcome="maybe"), "outcome"),
        (lambda item: item.pop("outcomeTimestamp"), "outcomeTimestamp"),
        (lambda item: item.update(outcomeTimestamp="2026-01-01T00:00:00"), "timezone"),
        (lambda item: item.update(outcome="accepted"), "acceptedSuggestions is required"),
        (lambda item: item.update(card=str(uuid.uuid4())), "not a card returned by this service"),
        (
            lambda item: item.update(outcome="accepted", acceptedSuggestions=[{"id": "not-offered"}]),
            "not on that card",
        ),
    ],
)
def test_feedback_validation(
    client: TestClient, signer: EhrTokenSigner, store: Store, mutate: Any, phrase: str
) -> None:
    order_path = "/cds-services/veritrace-imaging-order-select"
    card = _cards(client, signer, order_path, _order_body("pv", "order-select"))[0]
    item: dict[str, Any] = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": "2026-01-01T00:00:00Z",
    }
    mutate(item)
    response = _post(client, signer, order_path + "/feedback", {"feedback": [item]})
    validate_operation_outcome(response, 400)
    assert phrase in response.json()["issue"][0]["diagnostics"]
    with store.session_factory() as session:
        assert session.scalars(select(Feedback)).all() == []


def test_feedback_for_a_card_of_another_service_is_refused(
    client: TestClient, signer: EhrTokenSigner
) -> None:
    card = _cards(
        client, signer, "/cds-services/veritrace-imaging-order-select", _order_body("px", "order-select")
    )[0]
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z"}
    response = _post(
        client, signer, "/cds-services/veritrace-imaging-order-sign/feedback", {"feedback": [item]}
    )
    validate_operation_outcome(response, 400)


# ------------------------------------------------------------------ encounter-discharge
def test_discharge_lists_unresolved_findings_until_a_card_is_accepted(
    client: TestClient, signer: EhrTokenSigner, store: Store
) -> None:
    findings = [
        {
            "text": "Incidental 2 cm adrenal nodule; recommend follow-up CT",
            "severity": "minor",
            "citations": ["img:1:0"],
        },
        {"text": "Normal heart size", "severity": "normal", "citations": []},
    ]
    report = seed_report(store, patient_id="pd", findings=findings)
    seed_report(store, patient_id="pd", findings=[{"text": "Unremarkable", "severity": "normal"}])
    path = "/cds-services/veritrace-encounter-discharge"
    body = hook_body(
        "encounter-discharge",
        {"userId": "Practitioner/u1", "patientId": "pd", "encounterId": "e1"},
        {"finalReports": None, "imagingStudies": None},
    )
    cards = _cards(client, signer, path, body)
    assert len(cards) == 1
    assert cards[0]["extension"]["veritrace.report"] == {
        "reportId": report.id,
        "studyUid": report.study_uid,
        "pending": 1,
    }
    assert "adrenal nodule" in cards[0]["detail"] and "Normal heart size" not in cards[0]["detail"]
    # No viewer registered here: a plain link to where the draft will be, no SMART launch.
    assert cards[0]["links"] == [
        {
            "label": "Open the draft report",
            "url": f"{PUBLIC_BASE}/viewer/reports/{report.id}",
            "type": "absolute",
        }
    ]
    # Overriding does not resolve the findings; accepting the "follow-up arranged" suggestion does.
    now = datetime.now(UTC).isoformat()
    feedback_path = path + "/feedback"
    overridden = {"card": cards[0]["uuid"], "outcome": "overridden", "outcomeTimestamp": now}
    assert _post(client, signer, feedback_path, {"feedback": [overridden]}).status_code == 200
    again = _cards(client, signer, path, {**body, "hookInstance": str(uuid.uuid4())})
    assert len(again) == 1
    accepted = {
        "card": again[0]["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": again[0]["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": now,
    }
    assert _post(client, signer, feedback_path, {"feedback": [accepted]}).status_code == 200
    assert _cards(client, signer, path, {**body, "hookInstance": str(uuid.uuid4())}) == []


# ------------------------------------------------------------------ PostgreSQL
@pytest.fixture
def pg_store(tmp_path: Path) -> Iterator[Store]:
    name = f"vt_cds_{uuid.uuid4().hex[:10]}"
    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    store = make_store(tmp_path, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    try:
        yield store
    finally:
        store.engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
def test_on_postgresql_cards_feedback_and_replay(
    tmp_path: Path, pg_store: Store, signer: EhrTokenSigner
) -> None:
    seed_report(pg_store, patient_id="pg1", severity="critical")
    path = "/cds-services/veritrace-patient-view"
    body = hook_body(
        "patient-view",
        {"userId": "Practitioner/u1", "patientId": "pg1"},
        {"finalReports": None, "imagingStudies": None},
    )
    token = signer.token(PUBLIC_BASE + path)
    with TestClient(build_app(tmp_path, pg_store, signer)) as client:
        first = client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        replay = client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        assert first.status_code == 200 and replay.status_code == 401
        validate_service_response(first.json())
        card = first.json()["cards"][0]
        assert card["indicator"] == "critical"
        item = {
            "card": card["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": (datetime.now(UTC) - timedelta(seconds=5)).isoformat(),
        }
        assert _post(client, signer, path + "/feedback", {"feedback": [item]}).status_code == 200
    with pg_store.session_factory() as session:
        assert session.scalars(select(Feedback.card_uuid)).all() == [card["uuid"]]

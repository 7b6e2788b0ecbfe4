"""The review app's JSON API and pages over a real store and ledger: every role/endpoint pair, search,
audited views, CSRF, exports, the entry proof and verify-now."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from audit.review import ReviewConfig
from audit.review.csv_export import analyses_csv
from audit.review.model_card import KNOWN_ATTRIBUTES
from audit.review.source import AnalysisFilters, PageRequest
from audit.tables import entries
from integrations.dicom.spool import Spool
from integrations.store.review_source import SqlTraceSource
from tests.conftest import fresh_postgres_database
from tests.integration.review_seed import (
    PASSWORD,
    WEIGHTS_A,
    SeededStore,
    review_app,
    seed,
    write_local_users,
)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SeededStore, Path]]:
    tmp = tmp_path_factory.mktemp("review")
    yield seed(tmp, extra=30), tmp


@pytest.fixture(scope="module")
def app_client(seeded: tuple[SeededStore, Path]) -> TestClient:
    store, tmp = seeded
    config = ReviewConfig(local_users_file=write_local_users(tmp), secure_cookies=False)
    return TestClient(review_app(store, config))


def sign_in(app: TestClient, username: str) -> TestClient:
    """A fresh client (own cookie jar) signed in as ``username`` through the local form."""
    client = TestClient(app.app)
    page = client.get("/review/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    response = client.post(
        "/review/login/local",
        data={"username": username, "password": PASSWORD, "csrf_token": token.group(1), "next": ""},
        follow_redirects=False,
    )
    assert response.status_code == 303
    return client


def csrf_of(client: TestClient) -> str:
    page = client.get("/review/analyses")
    found = re.search(r'data-csrf="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def ledger_kinds(store: SeededStore, kind: str) -> list[sa.Row]:
    with store.ledger.engine.connect() as conn:
        return list(
            conn.execute(sa.select(entries).where(entries.c.kind == kind).order_by(entries.c.leaf_index))
        )


# The role x route matrix lives in tests/security/test_review_authorization.py, enumerated from the
# mounted app; this file keeps the behaviour of each route.


def test_user_without_a_review_role_cannot_sign_in(app_client: TestClient) -> None:
    client = TestClient(app_client.app)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/review/login").text)
    assert token
    response = client.post(
        "/review/login/local",
        data={"username": "nobody", "password": PASSWORD, "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/review/login?error=no-role"
    assert client.get("/review/api/analyses").status_code == 401


def test_wrong_password_and_missing_login_csrf_are_refused(app_client: TestClient) -> None:
    client = TestClient(app_client.app)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/review/login").text)
    assert token
    wrong = client.post(
        "/review/login/local",
        data={"username": "officer", "password": "nope", "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert wrong.headers["location"] == "/review/login?error=bad-password"
    forged = TestClient(app_client.app).post(
        "/review/login/local", data={"username": "officer", "password": PASSWORD, "csrf_token": "x"}
    )
    assert forged.status_code == 403


def test_sign_out_ends_the_session(app_client: TestClient) -> None:
    client = sign_in(app_client, "officer")
    token = csrf_of(client)
    assert client.post("/review/logout", data={"csrf_token": "wrong"}).status_code == 403
    client.post("/review/logout", data={"csrf_token": token}, follow_redirects=False)
    assert client.get("/review/api/analyses").status_code == 401


# ------------------------------------------------------------------------------------------ search


def test_filters_select_the_right_analyses(seeded: tuple[SeededStore, Path]) -> None:
    store = seeded[0]
    source = SqlTraceSource(store.session_factory)
    page = PageRequest(page=1, per_page=100)

    def ids(**filters: object) -> set[str]:
        return {a.id for a in source.list_analyses(AnalysisFilters.model_validate(filters), page).items}

    named = store.analyses
    assert ids(patient_id="pat-1001") == {named["overridden"]}
    assert ids(outcome="overridden") == {named["overridden"]}
    assert ids(outcome="accepted") == {named["accepted"]}
    assert ids(verification_failures=True) == {named["overridden"]}
    assert ids(model_version=WEIGHTS_A[:8]) == {named["overridden"], named["accepted"]}
    today = time.gmtime()
    recent = f"{today.tm_year:04d}-{today.tm_mon:02d}-{today.tm_mday:02d}"
    assert len(ids(date_to=recent)) == 33
    with pytest.raises(ValueError, match="after date_to"):
        AnalysisFilters.model_validate({"date_from": "2025-02-02", "date_to": "2025-01-01"})


def test_pagination_is_newest_first_and_complete(seeded: tuple[SeededStore, Path]) -> None:
    source = SqlTraceSource(seeded[0].session_factory)
    pages = [source.list_analyses(AnalysisFilters(), PageRequest(page=n, per_page=10)) for n in (1, 2, 3, 4)]
    assert pages[0].total == 33 and pages[0].pages == 4
    seen = [a for p in pages for a in p.items]
    assert len({a.id for a in seen}) == 33
    assert [a.queued_at for a in seen] == sorted((a.queued_at for a in seen), reverse=True)
    assert seen[0].id == seeded[0].analyses["overridden"]


def test_search_keeps_patient_ids_out_of_urls(app_client: TestClient) -> None:
    client = sign_in(app_client, "officer")
    response = client.post(
        "/review/search",
        data={"csrf_token": csrf_of(client), "target": "analyses", "patient_id": "pat-1001"},
        follow_redirects=False,
    )
    location = response.headers["location"]
    assert response.status_code == 303 and "pat-1001" not in location
    assert re.fullmatch(r"/review/analyses\?search=[A-Za-z0-9_-]+", location)
    page = client.get(location)
    assert "1 analysis found" in page.text and "pat-1001" in page.text
    # Another reviewer cannot use the token: searches belong to the session.
    other = sign_in(app_client, "admin").get(location)
    assert "33 analyses found" in other.text


def test_search_without_csrf_is_refused(app_client: TestClient) -> None:
    client = sign_in(app_client, "officer")
    assert client.post("/review/search", data={"patient_id": "pat-1001"}).status_code == 403
    assert client.post("/review/api/analyses/search", json={}).status_code == 403
    cross = client.post(
        "/review/api/analyses/search",
        json={},
        headers={"X-CSRF-Token": csrf_of(client), "Origin": "https://evil.example"},
    )
    assert cross.status_code == 403


def test_api_search_by_patient_in_the_body(app_client: TestClient, seeded: tuple[SeededStore, Path]) -> None:
    client = sign_in(app_client, "radiologist")
    body = {"filters": {"patient_id": "pat-1002"}, "per_page": 5}
    result = client.post("/review/api/analyses/search", json=body, headers={"X-CSRF-Token": csrf_of(client)})
    assert result.status_code == 200
    assert [a["id"] for a in result.json()["items"]] == [seeded[0].analyses["accepted"]]
    bad = client.post(
        "/review/api/analyses/search",
        json={"filters": {"outcome": "maybe"}},
        headers={"X-CSRF-Token": csrf_of(client)},
    )
    assert bad.status_code == 422


# --------------------------------------------------------------------------------- traces and audit


def test_trace_view_is_audited_before_it_is_shown(
    app_client: TestClient, seeded: tuple[SeededStore, Path]
) -> None:
    store = seeded[0]
    analysis_id = store.analyses["overridden"]
    before = len(ledger_kinds(store, "review.viewed"))
    client = sign_in(app_client, "radiologist")
    detail = client.get(f"/review/api/traces/{analysis_id}").json()
    page = client.get(f"/review/traces/{analysis_id}")
    views = ledger_kinds(store, "review.viewed")[before:]
    assert [json.loads(v.payload)["view"] for v in views] == ["api", "page"]
    assert {v.actor for v in views} == {"reviewer:local:radiologist"}
    assert {v.patient_ref for v in views} == {"Patient/pat-1001"}
    assert f"ledger entry {views[-1].leaf_index}." in " ".join(page.text.split())
    assert [s["verdict"] for s in detail["statements"]] == ["supported", "rejected"]
    assert detail["statements"][1]["reason"] == "number_mismatch"
    assert detail["summary"]["outcome"] == "overridden"
    assert detail["feedback"][0]["override_reason"] == "Disagree"
    assert [s["kind"] for s in detail["steps"]][:3] == ["model", "prompt", "tool_call"]
    assert detail["steps"][2]["evidence_ids"] == ["ev1"]
    assert "CRP 19.0 mg/L" in page.text and "number_mismatch" in page.text


def test_unknown_trace_is_404_and_not_audited(
    app_client: TestClient, seeded: tuple[SeededStore, Path]
) -> None:
    before = len(ledger_kinds(seeded[0], "review.viewed"))
    client = sign_in(app_client, "officer")
    assert client.get("/review/api/traces/no-such-id").status_code == 404
    assert len(ledger_kinds(seeded[0], "review.viewed")) == before


def test_fhir_export_is_a_valid_bundle_of_the_trace(
    app_client: TestClient, seeded: tuple[SeededStore, Path]
) -> None:
    analysis_id = seeded[0].analyses["overridden"]
    response = sign_in(app_client, "officer").get(f"/review/api/traces/{analysis_id}/export.fhir.json")
    assert response.headers["content-type"].startswith("application/fhir+json")
    bundle = response.json()
    kinds = [
        coding["code"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "AuditEvent"
        for coding in e["resource"]["subtype"]
    ]
    assert "analysis.started" in kinds and "read" in kinds  # pipeline steps and the export view itself
    assert any(e["resource"]["resourceType"] == "Provenance" for e in bundle["entry"])
    profiles = {p for e in bundle["entry"] for p in e["resource"].get("meta", {}).get("profile", [])}
    assert any(p.endswith("IHE.BasicAudit.PatientRead") for p in profiles)


def test_pdf_export_names_the_ledger_entry(app_client: TestClient, seeded: tuple[SeededStore, Path]) -> None:
    analysis_id = seeded[0].analyses["overridden"]
    response = sign_in(app_client, "admin").get(f"/review/api/traces/{analysis_id}/export.pdf")
    assert response.content.startswith(b"%PDF-")
    assert response.headers["content-disposition"] == f'attachment; filename="trace-{analysis_id}.pdf"'
    last = ledger_kinds(seeded[0], "review.viewed")[-1]
    assert json.loads(last.payload)["view"] == "export-pdf"


def test_csv_export_of_a_saved_search(app_client: TestClient, seeded: tuple[SeededStore, Path]) -> None:
    client = sign_in(app_client, "officer")
    location = client.post(
        "/review/search",
        data={"csrf_token": csrf_of(client), "target": "analyses", "verification": "yes"},
        follow_redirects=False,
    ).headers["location"]
    token = location.split("search=")[1]
    rows = list(
        csv.DictReader(io.StringIO(client.get(f"/review/api/analyses/export.csv?search={token}").text))
    )
    assert [r["analysis_id"] for r in rows] == [seeded[0].analyses["overridden"]]
    assert rows[0]["rejected_statements"] == "1" and rows[0]["outcome"] == "overridden"
    exported = ledger_kinds(seeded[0], "review.exported")[-1]
    assert json.loads(exported.payload)["rows"] == 1


def test_csv_cells_cannot_become_formulas(seeded: tuple[SeededStore, Path]) -> None:
    source = SqlTraceSource(seeded[0].session_factory)
    item = source.list_analyses(AnalysisFilters(), PageRequest(per_page=1)).items[0]
    text = analyses_csv([item.model_copy(update={"patient_id": "=HYPERLINK(1)", "severity": "@x"})])
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["patient_id"] == "'=HYPERLINK(1)" and row["severity"] == "'@x"


# -------------------------------------------------------------------------------------------- ledger


def test_entry_proof_verifies_on_the_server_and_names_the_bytes(
    app_client: TestClient, seeded: tuple[SeededStore, Path]
) -> None:
    import base64
    import hashlib

    client = sign_in(app_client, "officer")
    proof = client.get("/review/api/ledger/entries/5").json()
    assert proof["server_verdict"] == "verified"
    leaf = hashlib.sha256(b"\x00" + base64.b64decode(proof["entry_b64"])).hexdigest()
    assert leaf == proof["stored_leaf_hash"] == proof["proof"]["leaf_hash"]
    assert proof["proof"]["root_hash"] == proof["checkpoint"]["root_hash"]
    size = client.get("/review/api/ledger/checkpoint").json()["size"]
    newest = client.get(f"/review/api/ledger/entries/{size - 1}").json()
    assert newest["server_verdict"] == "not-yet-checkpointed"  # the sign-in entries came after it
    assert client.get("/review/api/ledger/entries/999999").status_code == 404


def test_verify_now_runs_and_is_recorded(app_client: TestClient, seeded: tuple[SeededStore, Path]) -> None:
    client = sign_in(app_client, "officer")
    token = csrf_of(client)
    assert client.post("/review/api/ledger/verify").status_code == 403
    job = client.post("/review/api/ledger/verify", headers={"X-CSRF-Token": token}).json()
    deadline = time.monotonic() + 30
    while job["stage"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(f"/review/api/ledger/verify/{job['id']}").json()
    assert job["stage"] == "done" and job["ok"] is True
    assert job["checkpoints_checked"] >= 1
    assert job["entries_checked"] == job["size"] >= job["entries_at_start"] > 0  # progress reached the end
    recorded = seeded[0].ledger.entry(job["ledger_entry"])
    assert recorded.kind == "review.ledger_verified" and recorded.payload and recorded.payload["ok"] is True


# ---------------------------------------------------------------------------------- dashboards, card


def test_dashboard_rates_per_model_version(app_client: TestClient) -> None:
    data = sign_in(app_client, "radiologist").get("/review/api/dashboard?days=30&bucket=week").json()
    by_version: dict[str, dict[str, float]] = {}
    for p in data["series"]:
        row = by_version.setdefault(p["model_version"], {"analyses": 0, "overridden": 0, "with_feedback": 0})
        for key in row:
            row[key] += p[key]
    assert by_version[WEIGHTS_A[:12]] == {"analyses": 2, "overridden": 1, "with_feedback": 2}
    assert by_version["b2" * 6]["analyses"] == 31
    page = sign_in(app_client, "radiologist").get("/review/dashboards?days=30")
    assert page.text.count('role="img"') == 3 and WEIGHTS_A[:12] in page.text


def test_model_card_lists_every_hti1_attribute(app_client: TestClient, tmp_path: Path) -> None:
    card = sign_in(app_client, "radiologist").get("/review/api/model-card").json()
    attributes = [a for s in card["sections"] for a in s["attributes"]]
    assert len(card["sections"]) == 8 and {a["key"] for a in attributes} == KNOWN_ATTRIBUTES
    assert all(a["value"] is None for a in attributes)  # none configured: shown as not provided
    page = sign_in(app_client, "radiologist").get("/review/model-card")
    assert page.text.count("Not provided") == len(KNOWN_ATTRIBUTES)


def test_model_card_file_values_are_shown_and_typos_refused(
    seeded: tuple[SeededStore, Path], tmp_path: Path
) -> None:
    card_file = tmp_path / "card.json"
    card_file.write_text(json.dumps({"attributes": {"intended_use": "Draft chest X-ray reports for review"}}))
    config = ReviewConfig(
        local_users_file=write_local_users(tmp_path), secure_cookies=False, model_card_file=card_file
    )
    client = sign_in(TestClient(review_app(seeded[0], config)), "radiologist")
    page = client.get("/review/model-card").text
    assert 'id="attr-intended_use">Draft chest X-ray reports for review' in page
    card_file.write_text(json.dumps({"attributes": {"intended_uses": "typo"}}))
    with pytest.raises(ValueError, match="intended_uses"):
        review_app(seeded[0], config)


# ------------------------------------------------------------------------------------------- config


def test_router_needs_a_way_to_sign_in(seeded: tuple[SeededStore, Path]) -> None:
    with pytest.raises(ValueError, match="OIDC provider or a local users file"):
        review_app(seeded[0], ReviewConfig())


def test_open_redirects_are_refused(app_client: TestClient) -> None:
    client = TestClient(app_client.app)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/review/login").text)
    assert token
    response = client.post(
        "/review/login/local",
        data={
            "username": "officer",
            "password": PASSWORD,
            "csrf_token": token.group(1),
            "next": "//evil.example/review/",
        },
        follow_redirects=False,
    )
    assert response.headers["location"] == "/review/analyses"


@pytest.mark.postgres
def test_review_api_on_postgresql(tmp_path: Path) -> None:
    for url in fresh_postgres_database():
        store = seed(tmp_path, url, extra=2)
        app = TestClient(
            review_app(
                store, ReviewConfig(local_users_file=write_local_users(tmp_path), secure_cookies=False)
            )
        )
        client = sign_in(app, "officer")
        listing = client.get("/review/api/analyses?outcome=overridden").json()
        assert [a["id"] for a in listing["items"]] == [store.analyses["overridden"]]
        assert client.get(f"/review/api/analyses?model_version={WEIGHTS_A[:6]}").json()["total"] == 2
        detail = client.get(f"/review/api/traces/{store.analyses['overridden']}").json()
        assert detail["summary"]["rejected_statements"] == 1
        assert client.get("/review/api/ledger/entries/1").json()["server_verdict"] == "verified"
        store.ledger.engine.dispose()
        store.session_factory.kw["bind"].dispose()


def test_mounted_in_the_cds_app(seeded: tuple[SeededStore, Path], tmp_path: Path) -> None:
    """The lead's three lines in ``cds.app``: the review app works beside the CDS routes and its errors."""
    from audit.review import build_review_router
    from cds.app import create_app
    from tests.integration.cds_support import JwtOffSettings

    store = seeded[0]
    app = create_app(
        JwtOffSettings(home=tmp_path, public_base_url="http://testserver"),
        session_factory=store.session_factory,
        ledger=store.ledger,
    )
    config = ReviewConfig(local_users_file=write_local_users(tmp_path), secure_cookies=False)
    app.include_router(
        build_review_router(
            SqlTraceSource(store.session_factory, Spool(store.spool_dir)), store.ledger, config
        )
    )
    anonymous = TestClient(app).get("/review/api/analyses")
    assert anonymous.status_code == 401 and anonymous.json()["resourceType"] == "OperationOutcome"
    client = sign_in(TestClient(app), "officer")
    assert client.get("/review/api/analyses").json()["total"] == 33
    assert client.get("/cds-services").status_code == 200

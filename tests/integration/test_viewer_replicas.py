"""Two API replicas on one PostgreSQL database, as behind a load balancer without sticky sessions.

Each replica is its own ``create_app`` with its own engine, ledger and VERITRACE_HOME; they share only
the database and the session key from settings. A launch started on one is finished by a callback on
the other, the page is read from either, and the replayed callback is refused by both. The EHR is the
real stand-in (oidc-provider) from ``deploy/smart-ehr``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cds.app import create_app
from cds.demo_smart_ehr import RunningSmartEhr, SmartClient, SmartEhrConfig, running_smart_ehr
from integrations.fhir.server import free_port
from integrations.store.models import ViewerLaunchRecord, ViewerSessionRecord
from tests.integration.cds_support import JwtOffSettings, Store, make_store, seed_report

pytestmark = pytest.mark.postgres

PUBLIC = "http://viewer.test"  # the load balancer's address: both replicas answer for it
CLIENT_ID = "veritrace-viewer"
CLIENT_SECRET = secrets.token_urlsafe(24)
PATIENT = "p-replicas"
SUMMARY = "Indeterminate 8 mm right lower lobe nodule"


@pytest.fixture
def ehr(tmp_path: Path) -> Iterator[RunningSmartEhr]:
    config = SmartEhrConfig(
        port=free_port(),
        fhir_upstream="http://127.0.0.1:9/fhir",  # the page needs no FHIR read
        fhir_upstream_token="unused",
        user="dr-replicas",
        standalone_patient=PATIENT,
        clients=(SmartClient(CLIENT_ID, CLIENT_SECRET, (f"{PUBLIC}/viewer/callback",)),),
    )
    with running_smart_ehr(config, tmp_path / "ehr") as running:
        yield running


def _replica(
    home: Path, database_url: str, ehr: RunningSmartEhr, session_key: str
) -> tuple[Store, TestClient]:
    store = make_store(home, database_url)
    settings = JwtOffSettings(
        home=home,
        public_base_url=PUBLIC,
        viewer_client_id=CLIENT_ID,
        viewer_client_secret=CLIENT_SECRET,
        viewer_allowed_issuers=[ehr.iss],
        viewer_session_key=session_key,
    )
    app = create_app(settings, session_factory=store.session_factory, ledger=store.ledger)
    return store, TestClient(app, base_url=PUBLIC)


def _until_callback(browser: httpx.Client, authorize_url: str) -> str:
    """Follow the EHR's redirects from its authorize endpoint to the viewer's callback (not opened)."""
    response = browser.get(authorize_url)
    while response.status_code in (302, 303):
        location = str(httpx.URL(str(response.url)).join(response.headers["location"]))
        if location.startswith(f"{PUBLIC}/viewer/callback"):
            return location
        response = browser.get(location)
    raise AssertionError(f"no redirect to the callback: {response.status_code} {response.text[:200]}")


def _new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def test_launch_on_one_replica_callback_on_the_other(
    tmp_path: Path, postgres_url: str, ehr: RunningSmartEhr
) -> None:
    key = _new_key()
    store_a, replica_a = _replica(tmp_path / "a", postgres_url, ehr, key)
    store_b, replica_b = _replica(tmp_path / "b", postgres_url, ehr, key)
    _, stranger = _replica(tmp_path / "c", postgres_url, ehr, _new_key())  # same database, other key
    report = seed_report(store_a, patient_id=PATIENT, summary=SUMMARY)
    launch = httpx.post(f"{ehr.base_url}/ehr/launches", json={"patient": PATIENT}).json()["launch"]

    started = replica_a.get(
        f"/viewer/reports/{report.id}", params={"iss": ehr.iss, "launch": launch}, follow_redirects=False
    )
    assert started.status_code == 302, started.text
    with httpx.Client() as browser:
        callback = _until_callback(browser, started.headers["location"])
    with store_a.session_factory() as db:
        assert db.scalar(select(func.count()).select_from(ViewerLaunchRecord)) == 1

    opened = replica_b.get(callback)
    assert opened.status_code == 200, opened.text
    assert SUMMARY in opened.text
    match = re.search(r'<meta name="viewer-session" content="([^"]+)">', opened.text)
    assert match
    handle = {"X-Viewer-Session": match.group(1)}

    for replica in (replica_a, replica_b):
        page = replica.get("/viewer/api/page", headers=handle)
        assert page.status_code == 200 and SUMMARY in page.text
    assert stranger.get("/viewer/api/page", headers=handle).status_code == 401  # cannot open the token

    for replica in (replica_a, replica_b):
        replayed = replica.get(callback)
        assert replayed.status_code == 400 and "Unknown or expired launch" in replayed.text
        assert SUMMARY not in replayed.text

    with store_b.session_factory() as db:
        assert db.scalar(select(func.count()).select_from(ViewerLaunchRecord)) == 0
        session = db.scalars(select(ViewerSessionRecord)).one()
    assert session.handle_sha256 == hashlib.sha256(match.group(1).encode()).hexdigest()
    assert session.patient_id == PATIENT and session.report_id == report.id
    assert b"eyJ" not in session.sealed_access_token  # the EHR's JWT access token is not stored in clear
    opened_entries = [e for e in store_b.ledger.iter_entries() if e.kind == "viewer.opened"]
    assert len(opened_entries) == 1 and opened_entries[0].actor.endswith("/Practitioner/dr-replicas")

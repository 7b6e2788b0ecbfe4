"""patient-view end to end through the real app: stored drafts -> cards, staleness, audit, card rows."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import httpx
import pytest
from cds_support import ISSUER, PUBLIC_BASE, Store, build_app, hook_body, make_store, searchset, seed_report
from fastapi.testclient import TestClient
from sqlalchemy import select

from cds.client_auth.ehr_signer import EhrTokenSigner
from cds.demo_smart_ehr import SmartClient, SmartEhrConfig, running_smart_ehr
from integrations.fhir.server import free_port
from integrations.store.models import Card as StoredCard

SERVICE_URL = "/cds-services/veritrace-patient-view"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path)


@pytest.fixture
def signer() -> EhrTokenSigner:
    return EhrTokenSigner.generate(ISSUER, alg="ES384")


def _call(client: TestClient, signer: EhrTokenSigner, body: dict) -> dict:
    token = signer.token(PUBLIC_BASE + SERVICE_URL)
    response = client.post(SERVICE_URL, json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


def _empty_prefetch() -> dict:
    return {"finalReports": searchset(), "imagingStudies": searchset()}


def test_a_card_per_current_draft_with_indicator_link_and_verification(
    tmp_path: Path, store: Store, signer: EhrTokenSigner
) -> None:
    critical = seed_report(store, patient_id="p1", severity="critical", summary="Large right pneumothorax")
    minor = seed_report(store, patient_id="p1", severity="minor", summary="Mild degenerative change")
    seed_report(store, patient_id="p1", severity="moderate", status="superseded")
    seed_report(store, patient_id="someone-else", severity="critical")
    with TestClient(build_app(tmp_path, store, signer)) as client:
        cards = _call(
            client,
            signer,
            hook_body("patient-view", {"userId": "Practitioner/u1", "patientId": "p1"}, _empty_prefetch()),
        )["cards"]
    by_report = {card["extension"]["veritrace.report"]["reportId"]: card for card in cards}
    assert set(by_report) == {critical.id, minor.id}
    assert by_report[critical.id]["indicator"] == "critical"
    assert by_report[minor.id]["indicator"] == "info"
    assert by_report[critical.id]["summary"].startswith("AI draft")
    # No viewer registered with the EHR (VERITRACE_VIEWER_CLIENT_ID unset): a plain link, not a launch.
    assert by_report[critical.id]["links"] == [
        {
            "label": "Open the draft report",
            "url": f"{PUBLIC_BASE}/viewer/reports/{critical.id}",
            "type": "absolute",
        }
    ]
    assert "1 of 2 statements cite evidence" in by_report[critical.id]["detail"]
    with store.session_factory() as session:
        stored = {c.uuid: c.report_id for c in session.scalars(select(StoredCard)).all()}
    assert stored == {card["uuid"]: rid for rid, card in by_report.items()}


def test_with_the_viewer_registered_the_link_is_a_smart_launch_the_ehr_can_start(
    tmp_path: Path, store: Store, signer: EhrTokenSigner
) -> None:
    report = seed_report(
        store, patient_id="p1", signals=[{"kind": "safety", "text": "Retained foreign body"}]
    )
    secret = secrets.token_urlsafe(24)
    ehr_config = SmartEhrConfig(
        port=free_port(),
        fhir_upstream="http://127.0.0.1:9/fhir",  # never read: this test stops at the authorization code
        fhir_upstream_token="unused",
        user="dr-card",
        standalone_patient="p1",
        clients=(SmartClient("veritrace-viewer", secret, (f"{PUBLIC_BASE}/viewer/callback",)),),
    )
    with running_smart_ehr(ehr_config, tmp_path / "ehr") as ehr:
        app = build_app(
            tmp_path,
            store,
            signer,
            viewer_client_id="veritrace-viewer",
            viewer_client_secret=secret,
            viewer_allowed_issuers=[ehr.iss],
        )
        with TestClient(app) as client:
            cards = _call(
                client,
                signer,
                hook_body(
                    "patient-view", {"userId": "Practitioner/u1", "patientId": "p1"}, _empty_prefetch()
                ),
            )["cards"]
            assert len(cards) == 2  # the draft and its safety signal, both linking to the viewer
            for card in cards:
                assert card["links"] == [
                    {
                        "label": "Open the draft report",
                        "url": f"{PUBLIC_BASE}/viewer/reports/{report.id}",
                        "type": "smart",
                        "appContext": json.dumps({"reportId": report.id}, separators=(",", ":")),
                    }
                ]
            link = cards[0]["links"][0]
            # What the EHR does with a smart link: a launch with the card's appContext, then the URL
            # with iss and launch appended (SMART App Launch 2, EHR launch).
            launch = httpx.post(
                f"{ehr.base_url}/ehr/launches", json={"patient": "p1", "appContext": link["appContext"]}
            ).json()["launch"]
            started = client.get(
                link["url"], params={"iss": ehr.iss, "launch": launch}, follow_redirects=False
            )
        assert started.status_code == 302, started.text
        authorize = httpx.URL(started.headers["location"])
        assert str(authorize).startswith(f"{ehr.base_url}/auth?")
        assert authorize.params["client_id"] == "veritrace-viewer"
        assert authorize.params["launch"] == launch and authorize.params["aud"] == ehr.iss
        assert authorize.params["code_challenge_method"] == "S256" and authorize.params["code_challenge"]
        assert authorize.params["redirect_uri"] == f"{PUBLIC_BASE}/viewer/callback"
        # The EHR's authorization server accepts the request and sends the browser back with a code.
        with httpx.Client() as browser:
            response = browser.get(authorize)
            while response.status_code in (302, 303):
                location = httpx.URL(str(response.url)).join(response.headers["location"])
                if str(location).startswith(PUBLIC_BASE):
                    break
                response = browser.get(location)
    assert response.status_code in (302, 303), response.text
    assert str(location).startswith(f"{PUBLIC_BASE}/viewer/callback?")
    assert location.params["code"] and location.params["state"] == authorize.params["state"]


def test_untrained_model_is_labelled_in_the_summary(
    tmp_path: Path, store: Store, signer: EhrTokenSigner
) -> None:
    seed_report(store, patient_id="p2", untrained=True, summary="x" * 140)
    with TestClient(build_app(tmp_path, store, signer)) as client:
        cards = _call(
            client,
            signer,
            hook_body("patient-view", {"userId": "Practitioner/u1", "patientId": "p2"}, _empty_prefetch()),
        )["cards"]
    assert len(cards) == 1
    assert cards[0]["summary"].startswith("AI draft (moderate) [untrained model — not for clinical use]: ")
    assert len(cards[0]["summary"]) < 140


def test_draft_overtaken_by_a_final_report_is_not_shown(
    tmp_path: Path, store: Store, signer: EhrTokenSigner
) -> None:
    by_study = seed_report(store, patient_id="p3", study_uid="1.2.3.4.5")
    by_our_id = seed_report(store, patient_id="p3", study_uid="1.2.3.4.6", fhir_report_id="dr-ours")
    shown = seed_report(store, patient_id="p3", study_uid="1.2.3.4.7")
    prefetch = {
        "finalReports": searchset(
            {
                "resourceType": "DiagnosticReport",
                "id": "dr-human",
                "status": "final",
                "imagingStudy": [{"reference": "ImagingStudy/is1"}],
            },
            {"resourceType": "DiagnosticReport", "id": "dr-ours", "status": "amended"},
        ),
        "imagingStudies": searchset(
            {
                "resourceType": "ImagingStudy",
                "id": "is1",
                "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4.5"}],
            }
        ),
    }
    with TestClient(build_app(tmp_path, store, signer)) as client:
        cards = _call(
            client,
            signer,
            hook_body("patient-view", {"userId": "Practitioner/u1", "patientId": "p3"}, prefetch),
        )["cards"]
    shown_ids = {card["extension"]["veritrace.report"]["reportId"] for card in cards}
    assert shown_ids == {shown.id}
    assert by_study.id not in shown_ids and by_our_id.id not in shown_ids


def test_signals_become_their_own_cards(tmp_path: Path, store: Store, signer: EhrTokenSigner) -> None:
    seed_report(
        store,
        patient_id="p4",
        signals=[
            {
                "kind": "rare-disease",
                "text": "Pattern consistent with lymphangioleiomyomatosis",
                "citations": ["img:1:0"],
            },
            {"kind": "safety", "text": "Retained guidewire", "severity": "critical"},
            {"kind": "gossip", "text": "ignored"},
        ],
    )
    with TestClient(build_app(tmp_path, store, signer)) as client:
        cards = _call(
            client,
            signer,
            hook_body("patient-view", {"userId": "Practitioner/u1", "patientId": "p4"}, _empty_prefetch()),
        )["cards"]
    signals = {
        c["extension"]["veritrace.signal"]["kind"]: c for c in cards if "veritrace.signal" in c["extension"]
    }
    assert set(signals) == {"rare-disease", "safety"}
    assert signals["safety"]["indicator"] == "critical"
    assert signals["rare-disease"]["summary"].startswith("Possible rare disease")


def test_every_call_is_audited_without_patient_data_in_the_payload(
    tmp_path: Path, store: Store, signer: EhrTokenSigner
) -> None:
    seed_report(store, patient_id="p5")
    body = hook_body("patient-view", {"userId": "Practitioner/u1", "patientId": "p5"}, _empty_prefetch())
    with TestClient(build_app(tmp_path, store, signer)) as client:
        cards = _call(client, signer, body)["cards"]
    entry = store.ledger.entry(store.ledger.size() - 1)
    assert entry.kind == "cds.hook"
    assert entry.patient_ref == "Patient/p5"
    assert entry.actor == f"cds-client:{ISSUER}"
    payload = entry.payload
    assert payload["hook"] == "patient-view"
    assert payload["hookInstance"] == body["hookInstance"]
    assert payload["issuer"] == ISSUER
    assert payload["cards"] == len(cards) == 1
    assert payload["latencyMs"] > 0
    assert "p5" not in str(payload) and "nodule" not in str(payload)

"""The prefetch matrix against the real app and a real FHIR server (sekmet-fhir child process).

complete prefetch; partial (missing keys fetched); an OperationOutcome in a key (re-fetched); none but
fhirAuthorization (all fetched, the bearer token really checked by the server); none and no
authorization (412); FHIR server down (200, no card, reason audited); read timeout (same).
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cds_support import ISSUER, PUBLIC_BASE, Store, build_app, hook_body, make_store, searchset, seed_report
from fastapi.testclient import TestClient

from cds.client_auth.ehr_signer import EhrTokenSigner
from integrations.fhir.client import FhirClient
from integrations.fhir.server import LocalFhirServer

TOKEN = "cds-prefetch-test-token"
ORDER_SELECT = "/cds-services/veritrace-imaging-order-select"
PATIENT_VIEW = "/cds-services/veritrace-patient-view"


@pytest.fixture(scope="module")
def fhir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFhirServer]:
    """A FHIR server of our own that demands a bearer token, so fhirAuthorization is really used."""
    with LocalFhirServer(tmp_path_factory.mktemp("cds-fhir"), bearer_tokens=(TOKEN,)) as server:
        yield server


@pytest.fixture(scope="module")
def patient(fhir: LocalFhirServer) -> dict[str, Any]:
    """A pregnant patient with an iodinated-contrast allergy, a low eGFR and a CT chest 5 days ago."""
    pid = f"cds-{uuid.uuid4().hex[:10]}"
    recent = (datetime.now(UTC) - timedelta(days=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    resources = [
        {"resourceType": "Patient", "id": pid, "gender": "female"},
        {
            "resourceType": "AllergyIntolerance",
            "id": f"{pid}-allergy",
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                        "code": "active",
                    }
                ]
            },
            "criticality": "high",
            "code": {"text": "Iodinated contrast media"},
            "patient": {"reference": f"Patient/{pid}"},
        },
        {
            "resourceType": "Observation",
            "id": f"{pid}-egfr",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "62238-1"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": recent,
            "valueQuantity": {"value": 22, "unit": "mL/min/1.73m2"},
        },
        {
            "resourceType": "Observation",
            "id": f"{pid}-preg",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "82810-3"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": recent,
            "valueCodeableConcept": {
                "coding": [{"system": "http://snomed.info/sct", "code": "77386006", "display": "Pregnant"}]
            },
        },
        {
            "resourceType": "ImagingStudy",
            "id": f"{pid}-ct",
            "status": "available",
            "subject": {"reference": f"Patient/{pid}"},
            "started": recent,
            "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}],
            "description": "CT Chest",
        },
    ]
    with FhirClient(fhir.base_url, token=TOKEN) as client:
        for resource in resources:
            client.update(resource)
    return {
        "id": pid,
        "resources": {r["resourceType"] + ("-" + r["id"].rsplit("-", 1)[-1]): r for r in resources},
    }


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path)


@pytest.fixture
def signer() -> EhrTokenSigner:
    return EhrTokenSigner.generate(ISSUER, alg="ES384")


def _order_context(pid: str) -> dict[str, Any]:
    draft = {
        "resourceType": "ServiceRequest",
        "id": "draft-ct",
        "status": "draft",
        "intent": "order",
        "code": {"text": "CT chest with IV contrast"},
        "subject": {"reference": f"Patient/{pid}"},
    }
    return {
        "userId": "Practitioner/u1",
        "patientId": pid,
        "selections": ["ServiceRequest/draft-ct"],
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]},
    }


def _post(client: TestClient, signer: EhrTokenSigner, path: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(
        path, json=body, headers={"Authorization": f"Bearer {signer.token(PUBLIC_BASE + path)}"}
    )


def _topics(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {card["source"]["topic"]["code"] for card in response.json()["cards"]}


ALL_TOPICS = {"contrast-allergy", "renal-function", "pregnancy", "duplicate-imaging"}


def _full_prefetch(patient: dict[str, Any]) -> dict[str, Any]:
    r = patient["resources"]
    return {
        "patient": r["Patient-" + patient["id"].rsplit("-", 1)[-1]],
        "allergies": searchset(r["AllergyIntolerance-allergy"]),
        "renalLabs": searchset(r["Observation-egfr"]),
        "pregnancy": searchset(r["Observation-preg"]),
        "recentImaging": searchset(r["ImagingStudy-ct"]),
    }


def _last_audit(store: Store) -> dict[str, Any]:
    entry = store.ledger.entry(store.ledger.size() - 1)
    assert entry.kind == "cds.hook"
    return dict(entry.payload)


def test_complete_prefetch_needs_no_fhir_server(
    tmp_path: Path, store: Store, signer: EhrTokenSigner, patient: dict[str, Any]
) -> None:
    with TestClient(build_app(tmp_path, store, signer)) as client:
        topics = _topics(
            _post(
                client,
                signer,
                ORDER_SELECT,
                hook_body("order-select", _order_context(patient["id"]), _full_prefetch(patient)),
            )
        )
    assert topics == ALL_TOPICS
    assert _last_audit(store)["prefetch"] == {"fetched": [], "unavailable": {}}


def test_partial_prefetch_fetches_the_missing_keys(
    tmp_path: Path, store: Store, signer: EhrTokenSigner, patient: dict[str, Any], fhir: LocalFhirServer
) -> None:
    prefetch = _full_prefetch(patient)
    del prefetch["allergies"], prefetch["recentImaging"]
    body = hook_body(
        "order-select",
        _order_context(patient["id"]),
        prefetch,
        fhirServer=fhir.base_url,
        fhirAuthorization={
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "veritrace",
        },
    )
    with TestClient(build_app(tmp_path, store, signer)) as client:
        assert _topics(_post(client, signer, ORDER_SELECT, body)) == ALL_TOPICS
    assert _last_audit(store)["prefetch"]["fetched"] == ["allergies", "recentImaging"]


def test_operation_outcome_in_a_key_is_refetched(
    tmp_path: Path, store: Store, signer: EhrTokenSigner, patient: dict[str, Any], fhir: LocalFhirServer
) -> None:
    prefetch = _full_prefetch(patient)
    prefetch["allergies"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }
    body = hook_body(
        "order-select",
        _order_context(patient["id"]),
        prefetch,
        fhirServer=fhir.base_url,
        fhirAuthorization={"access_token": TOKEN, "token_type": "Bearer"},
    )
    with TestClient(build_app(tmp_path, store, signer)) as client:
        assert "contrast-allergy" in _topics(_post(client, signer, ORDER_SELECT, body))
    assert _last_audit(store)["prefetch"]["fetched"] == ["allergies"]


def test_no_prefetch_but_fhir_authorization_fetches_everything(
    tmp_path: Path, store: Store, signer: EhrTokenSigner, patient: dict[str, Any], fhir: LocalFhirServer
) -> None:
    body = hook_body(
        "order-select",
        _order_context(patient["id"]),
        None,
        fhirServer=fhir.base_url,
        fhirAuthorization={"access_token": TOKEN, "token_type": "Bearer"},
    )
    with TestClient(build_app(tmp_path, store, signer)) as client:
        assert _topics(_post(client, signer, ORDER_SELECT, body)) == ALL_TOPICS
    assert sorted(_last_audit(store)["prefetch"]["fetched"]) == [
        "allergies",
        "patient",
        "pregnancy",
        "recentImaging",
        "renalLabs",
    ]


def test_wrong_fhir_token_degrades_to_no_card_with_reason(
    tmp_path: Path, store: Store, signer: EhrTokenSigner, patient: dict[str, Any], fhir: LocalFhirServer
) -> None:
    body = hook_body(
        "order-select",
        _order_context(patient["id"]),
        None,
        fhirServer=fhir.base_url,
        fhirAuthorization={"access_token": "wrong", "token_type": "Bearer"},
    )
    with TestClient(build_app(tmp_path, store, signer)) as client:
        assert _topics(_post(client, signer, ORDER_SELECT, body)) == set()
    audit = _last_audit(store)
    assert audit["prefetch"]["unavailable"]["allergies"] == "FHIR server answered 401"
    assert any(reason.startswith("contrast allergy check skipped") for reason in audit["skipped"])


def test_no_prefetch_and_no_authorization_is_412(
    tmp_path: Path, store: Store, signer: EhrTokenSigner, patient: dict[str, Any], fhir: LocalFhirServer
) -> None:
    with TestClient(build_app(tmp_path, store, signer)) as client:
        for extra in ({}, {"fhirServer": fhir.base_url}):
            response = _post(
                client,
                signer,
                ORDER_SELECT,
                hook_body("order-select", _order_context(patient["id"]), None, **extra),
            )
            assert response.status_code == 412, response.text
            assert response.json()["resourceType"] == "OperationOutcome"
    assert _last_audit(store)["status"] == 412


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_fhir_server_down_degrades_to_no_card(tmp_path: Path, store: Store, signer: EhrTokenSigner) -> None:
    seed_report(store, patient_id="p-down")
    down = f"http://127.0.0.1:{_closed_port()}/fhir"
    body = hook_body(
        "patient-view",
        {"userId": "Practitioner/u1", "patientId": "p-down"},
        None,
        fhirServer=down,
        fhirAuthorization={"access_token": TOKEN, "token_type": "Bearer"},
    )
    with TestClient(build_app(tmp_path, store, signer)) as client:
        response = _post(client, signer, PATIENT_VIEW, body)
    assert response.status_code == 200 and response.json() == {"cards": []}
    audit = _last_audit(store)
    assert audit["prefetch"]["unavailable"]["finalReports"].startswith("FHIR server unreachable")
    unreachable = "FHIR server unreachable (ConnectError)"
    assert audit["skipped"] == [
        "1 draft card(s) withheld: staleness unknown "
        f"(finalReports: {unreachable}; imagingStudies: {unreachable})"
    ]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: a FHIR server that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    sock.close()


def test_fhir_read_timeout_degrades_within_the_budget(
    tmp_path: Path, store: Store, signer: EhrTokenSigner, patient: dict[str, Any], silent_server: str
) -> None:
    prefetch = _full_prefetch(patient)
    del prefetch["allergies"]
    body = hook_body(
        "order-select",
        _order_context(patient["id"]),
        prefetch,
        fhirServer=silent_server,
        fhirAuthorization={"access_token": TOKEN, "token_type": "Bearer"},
    )
    app = build_app(tmp_path, store, signer)
    app.state.cds.fetcher.timeout_s = 0.5
    with TestClient(app) as client:
        topics = _topics(_post(client, signer, ORDER_SELECT, body))
    assert topics == ALL_TOPICS - {"contrast-allergy"}
    audit = _last_audit(store)
    assert audit["prefetch"]["unavailable"] == {"allergies": "FHIR server did not answer within 0.5 s"}
    assert audit["latencyMs"] < 3000


def test_patient_view_staleness_from_a_real_fhir_search(
    tmp_path: Path, store: Store, signer: EhrTokenSigner, fhir: LocalFhirServer
) -> None:
    pid = f"cds-{uuid.uuid4().hex[:10]}"
    finalised = seed_report(store, patient_id=pid, study_uid="1.2.840.99.1")
    current = seed_report(store, patient_id=pid, study_uid="1.2.840.99.2")
    with FhirClient(fhir.base_url, token=TOKEN) as client:
        client.update({"resourceType": "Patient", "id": pid})
        client.update(
            {
                "resourceType": "ImagingStudy",
                "id": f"{pid}-is",
                "status": "available",
                "subject": {"reference": f"Patient/{pid}"},
                "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.840.99.1"}],
            }
        )
        client.update(
            {
                "resourceType": "DiagnosticReport",
                "id": f"{pid}-dr",
                "status": "final",
                "code": {"text": "CT"},
                "subject": {"reference": f"Patient/{pid}"},
                "effectiveDateTime": "2026-01-01",
                "imagingStudy": [{"reference": f"ImagingStudy/{pid}-is"}],
            }
        )
    body = hook_body(
        "patient-view",
        {"userId": "Practitioner/u1", "patientId": pid},
        None,
        fhirServer=fhir.base_url,
        fhirAuthorization={"access_token": TOKEN, "token_type": "Bearer"},
    )
    with TestClient(build_app(tmp_path, store, signer)) as client:
        response = _post(client, signer, PATIENT_VIEW, body)
    assert response.status_code == 200, response.text
    shown = {card["extension"]["veritrace.report"]["reportId"] for card in response.json()["cards"]}
    assert shown == {current.id} and finalised.id not in shown

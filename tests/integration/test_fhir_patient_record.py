"""read_patient_record against a real sekmet-fhir loaded with the synthetic patients."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qsl

import httpx
import pytest

from integrations.fhir import codes
from integrations.fhir.canonical import resource_sha256
from integrations.fhir.client import FhirClient
from integrations.fhir.errors import FhirRequestError, FhirResponseError
from integrations.fhir.patient_record import read_patient_record
from integrations.fhir.server import LocalFhirServer
from integrations.fhir.synthetic import generate_patients, load_synthetic_patients
from model.context import PatientContext


@pytest.fixture(scope="module")
def synthetic_loaded(fhir_server: LocalFhirServer) -> None:
    with FhirClient(fhir_server.base_url) as client:
        load_synthetic_patients(client, generate_patients())


@pytest.fixture
def loaded(synthetic_loaded: None, fhir_client: FhirClient) -> FhirClient:
    return fhir_client


def test_record_holds_what_the_model_needs(loaded: FhirClient) -> None:
    record = read_patient_record(loaded, "vt-demo-1")
    kidney = generate_patients()[0]
    assert record.patient.resource_id == "vt-demo-1"
    assert len(record.conditions) == 3  # the resolved pneumonia is left out
    assert all(c.resource["clinicalStatus"]["coding"][0]["code"] == "active" for c in record.conditions)
    assert len(record.observations) == len(kidney.of_type("Observation"))
    dates = [o.resource["effectiveDateTime"] for o in record.observations]
    assert dates == sorted(dates, reverse=True)
    assert len(record.medication_requests) == 2 and len(record.allergies) == 1
    assert [r.resource["code"]["text"] for r in record.diagnostic_reports] == ["CT Chest"]


def test_each_resource_is_pinned_to_its_version_and_digest(loaded: FhirClient) -> None:
    record = read_patient_record(loaded, "vt-demo-1")
    for recorded in record.resources():
        assert recorded.version_id == recorded.resource["meta"]["versionId"]
        assert recorded.last_updated is not None
        assert recorded.sha256 == resource_sha256(loaded.read(recorded.resource_type, recorded.resource_id))


def test_reads_are_logged_and_patient_scoped(loaded: FhirClient) -> None:
    record = read_patient_record(loaded, "vt-demo-2")
    assert [r.resource_type for r in record.reads] == [
        "Patient", "Condition", "Observation", "MedicationRequest", "AllergyIntolerance", "DiagnosticReport",
    ]  # fmt: skip
    assert record.reads[0].interaction == "read" and record.reads[0].query == ""
    for read in record.reads[1:]:
        assert ("patient", "vt-demo-2") in parse_qsl(read.query)
        assert read.count == len(read.versions)
    observations = record.reads[2]
    assert observations.versions == [o.reference for o in record.observations]
    assert ("_sort", "-date") in parse_qsl(observations.query)


def test_most_recent_observations_only(loaded: FhirClient) -> None:
    full = read_patient_record(loaded, "vt-demo-3")
    recent = read_patient_record(loaded, "vt-demo-3", max_observations=5)
    assert [o.reference for o in recent.observations] == [o.reference for o in full.observations[:5]]


def test_ai_asserted_reports_are_not_evidence(loaded: FhirClient) -> None:
    ai_report = {
        "resourceType": "DiagnosticReport",
        "meta": {"security": [{"system": codes.V3_OBSERVATION_VALUE, "code": "AIAST"}]},
        "identifier": [{"system": "urn:test", "value": uuid.uuid4().hex}],
        "status": "preliminary",
        "code": {"text": "AI draft"},
        "subject": {"reference": "Patient/vt-demo-3"},
    }
    loaded.create(ai_report)
    record = read_patient_record(loaded, "vt-demo-3")
    assert [r.resource["code"]["text"] for r in record.diagnostic_reports] == ["XR Chest 2 Views"]


def test_evidence_items_are_citable_and_carry_no_name(loaded: FhirClient) -> None:
    record = read_patient_record(loaded, "vt-demo-1")
    evidence = record.to_evidence()
    context = PatientContext(patient_id="vt-demo-1", evidence=evidence)  # validates unique ids
    assert len(context.evidence) == sum(1 for _ in record.resources())
    assert evidence[0].id == f"Patient/vt-demo-1/_history/{record.patient.version_id}"
    newest_egfr = next(e for e in evidence if e.display.startswith("eGFR "))
    assert newest_egfr.display.endswith(" mL/min/1.73m2 on 2026-10-02")
    assert all("Demo-Kidney" not in e.display and "Alpha" not in e.display for e in evidence)


def test_unknown_patient_is_a_request_error(fhir_client: FhirClient) -> None:
    with pytest.raises(FhirRequestError) as err:
        read_patient_record(fhir_client, f"nobody-{uuid.uuid4().hex[:8]}")
    assert err.value.status == 404


def test_bad_patient_id_is_refused_before_any_request(fhir_client: FhirClient) -> None:
    with pytest.raises(ValueError, match="patient_id"):
        read_patient_record(fhir_client, "vt-demo-1&_id=x")


def test_a_resource_of_another_patient_is_refused() -> None:
    """A server that ignored ``patient=`` (simulated: sekmet-fhir filters correctly)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/Patient/p1"):
            return httpx.Response(
                200, json={"resourceType": "Patient", "id": "p1", "meta": {"versionId": "1"}}
            )
        foreign = {"resourceType": "Condition", "id": "c9", "subject": {"reference": "Patient/p2"}}
        return httpx.Response(
            200, json={"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": foreign}]}
        )

    client = FhirClient("http://fhir.test/fhir", transport=httpx.MockTransport(handler))
    with client, pytest.raises(FhirResponseError, match="another patient"):
        read_patient_record(client, "p1")

"""write_draft_report against a real sekmet-fhir: content, labels, provenance, idempotency."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import pytest

from integrations.fhir import codes
from integrations.fhir.client import FhirClient
from integrations.fhir.patient_record import read_patient_record
from integrations.fhir.server import LocalFhirServer
from integrations.fhir.synthetic import generate_patients, load_synthetic_patients
from integrations.fhir.validation import validate_resource
from integrations.fhir.writeback import MODEL_WEIGHTS_IDENTIFIER, write_draft_report
from model.report import Statement

STUDY_UID = "1.2.826.0.1.3680043.8.498.12345"
MODEL = {
    "family": "qwen2_5_vl",
    "architecture": "Qwen2_5_VLForConditionalGeneration",
    "model_type": "qwen2_5_vl",
    "weights_sha256": "ab" * 32,
    "dtype": "float32",
    "untrained": True,
}


@pytest.fixture(scope="module")
def synthetic_loaded(fhir_server: LocalFhirServer) -> None:
    with FhirClient(fhir_server.base_url) as client:
        load_synthetic_patients(client, generate_patients())


def _write(
    client: FhirClient, analysis_id: str, *, patient_id: str = "vt-demo-1", model: dict | None = MODEL
):
    record = read_patient_record(client, patient_id)
    egfr = next(e for e in record.to_evidence() if e.display.startswith("eGFR"))
    statements = [
        Statement(text="Renal function reduced.", citations=[egfr.id, egfr.id]),
        Statement(text="Nodule unchanged.", citations=[f"img:{STUDY_UID}.1.1:0", "tool:measure:1"]),
    ]
    written = write_draft_report(
        client,
        patient_id=patient_id,
        study_uid=STUDY_UID,
        analysis_id=analysis_id,
        conclusion="Stable 6 mm nodule.",
        statements=statements,
        presented_text="# Draft\n\n- Stable 6 mm nodule (untrained model output)",
        model_device=model,
        issued=datetime(2026, 10, 2, 12, 0, tzinfo=UTC),
    )
    return written, egfr


def test_report_content_labels_and_provenance(synthetic_loaded: None, fhir_client: FhirClient) -> None:
    written, egfr = _write(fhir_client, f"an-{uuid.uuid4().hex}")
    assert written.created and written.version_id == "1"
    report = fhir_client.read("DiagnosticReport", written.id)
    validate_resource(report)
    assert report["status"] == "preliminary"
    assert {"system": codes.V3_OBSERVATION_VALUE, "code": "AIAST"}.items() <= report["meta"]["security"][
        0
    ].items()
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    assert report["code"]["coding"][0] == {
        "system": codes.LOINC, "code": "18748-4", "display": "Diagnostic imaging study",
    }  # fmt: skip
    assert report["subject"] == {"reference": "Patient/vt-demo-1"}
    assert report["issued"] == "2026-10-02T12:00:00.000Z"
    form = report["presentedForm"][0]
    assert form["contentType"] == "text/markdown"
    assert base64.b64decode(form["data"]).decode().startswith("# Draft")

    provenance = fhir_client.read("Provenance", written.provenance_id or "")
    validate_resource(provenance)
    assert provenance["target"] == [{"reference": f"DiagnosticReport/{written.id}"}]
    assert provenance["agent"][0]["who"] == {"reference": f"Device/{written.device_id}"}
    cited = [e["what"].get("reference") for e in provenance["entity"]]
    assert cited == [egfr.id, None]  # eGFR version once, then the DICOM instance by UID; tool result skipped
    assert provenance["entity"][1]["what"]["identifier"]["value"] == f"urn:oid:{STUDY_UID}.1.1"
    device = fhir_client.read("Device", written.device_id or "")
    assert device["identifier"][0] == {"system": MODEL_WEIGHTS_IDENTIFIER, "value": "sha256:" + "ab" * 32}


def test_retry_returns_the_existing_report(synthetic_loaded: None, fhir_client: FhirClient) -> None:
    analysis_id = f"an-{uuid.uuid4().hex}"
    first, _ = _write(fhir_client, analysis_id)
    again, _ = _write(fhir_client, analysis_id)
    assert not again.created
    assert (again.id, again.provenance_id, again.device_id) == (
        first.id,
        first.provenance_id,
        first.device_id,
    )
    token = f"{codes.ANALYSIS_IDENTIFIER}|{analysis_id}"
    assert len(fhir_client.search("DiagnosticReport", {"identifier": token})) == 1
    assert len(fhir_client.search("Provenance", {"target": f"DiagnosticReport/{first.id}"})) == 1


def test_one_device_per_weights_digest(synthetic_loaded: None, fhir_client: FhirClient) -> None:
    a, _ = _write(fhir_client, f"an-{uuid.uuid4().hex}")
    b, _ = _write(fhir_client, f"an-{uuid.uuid4().hex}", patient_id="vt-demo-3")
    assert a.device_id == b.device_id
    assert (
        len(fhir_client.search("Device", {"identifier": f"{MODEL_WEIGHTS_IDENTIFIER}|sha256:{'ab' * 32}"}))
        == 1
    )
    unknown, _ = _write(fhir_client, f"an-{uuid.uuid4().hex}", model=None)
    assert unknown.device_id != a.device_id


def test_drafts_never_come_back_as_evidence(synthetic_loaded: None, fhir_client: FhirClient) -> None:
    _write(fhir_client, f"an-{uuid.uuid4().hex}")
    record = read_patient_record(fhir_client, "vt-demo-1")
    assert all(r.resource["status"] == "final" for r in record.diagnostic_reports)


def test_report_without_provenance_is_completed_not_duplicated(
    synthetic_loaded: None, fhir_client: FhirClient
) -> None:
    analysis_id = f"an-{uuid.uuid4().hex}"
    bare = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": codes.ANALYSIS_IDENTIFIER, "value": analysis_id}],
        "status": "preliminary",
        "code": {"text": "draft"},
        "subject": {"reference": "Patient/vt-demo-1"},
    }
    existing = fhir_client.create(bare)
    written, _ = _write(fhir_client, analysis_id)
    assert written.id == existing.resource_id and not written.created
    assert fhir_client.read("Provenance", written.provenance_id or "")["target"][0]["reference"].endswith(
        written.id
    )


def test_analysis_id_of_another_patient_is_refused(synthetic_loaded: None, fhir_client: FhirClient) -> None:
    analysis_id = f"an-{uuid.uuid4().hex}"
    _write(fhir_client, analysis_id, patient_id="vt-demo-1")
    with pytest.raises(ValueError, match="another patient"):
        _write(fhir_client, analysis_id, patient_id="vt-demo-2")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("study_uid", "1.2.abc", "DICOM UID"),
        ("analysis_id", "a|b", "analysis_id"),
        ("conclusion", "  ", "conclusion"),
        ("patient_id", "x/y", "patient_id"),
    ],
)
def test_bad_arguments_are_refused(fhir_client: FhirClient, field: str, value: str, message: str) -> None:
    args = {
        "patient_id": "vt-demo-1",
        "study_uid": STUDY_UID,
        "analysis_id": "an-1",
        "conclusion": "c",
        "statements": [],
        "presented_text": "t",
        "model_device": None,
        field: value,
    }
    with pytest.raises(ValueError, match=message):
        write_draft_report(fhir_client, **args)  # type: ignore[arg-type]

"""Synthetic patients: deterministic, valid, and loaded idempotently into a real sekmet-fhir."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from integrations.fhir import codes
from integrations.fhir.client import FhirClient
from integrations.fhir.synthetic import SyntheticPatient, generate_patients, load_synthetic_patients


def _loinc_codes(patient: SyntheticPatient) -> list[str]:
    return [c["code"] for o in patient.of_type("Observation") for c in o["code"]["coding"]]


def test_same_arguments_give_identical_resources_in_another_process() -> None:
    here = json.dumps([p.resources for p in generate_patients()], sort_keys=True)
    script = (
        "import json; from integrations.fhir.synthetic import generate_patients; "
        "print(json.dumps([p.resources for p in generate_patients()], sort_keys=True))"
    )
    there = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert here == there
    assert json.dumps([p.resources for p in generate_patients(seed=1)], sort_keys=True) != here


def test_ids_are_stable_and_unique() -> None:
    patients = generate_patients()
    assert [p.patient_id for p in patients] == ["vt-demo-1", "vt-demo-2", "vt-demo-3"]
    keys = [(r["resourceType"], r["id"]) for p in patients for r in p.resources]
    assert len(keys) == len(set(keys))
    assert all(
        p.resources[0] == {**p.resources[0], "resourceType": "Patient", "id": p.patient_id} for p in patients
    )


def test_clinical_content_covers_the_checks() -> None:
    kidney, pregnant, anticoagulated = generate_patients()
    egfr = [
        o for o in kidney.of_type("Observation") if o["code"]["coding"][0]["code"] in ("62238-1", "33914-3")
    ]
    assert len({o["effectiveDateTime"][:10] for o in egfr}) == 4
    assert {"62238-1", "33914-3", "2160-0", "718-7", "2823-3"} <= set(_loinc_codes(kidney))
    values = [o["valueQuantity"]["value"] for o in sorted(egfr, key=lambda o: o["effectiveDateTime"])]
    assert values[0] > values[-1]  # a declining trend
    assert kidney.of_type("AllergyIntolerance")[0]["code"]["text"] == "Iodinated contrast media"
    assert "Gadolinium" in pregnant.of_type("AllergyIntolerance")[0]["code"]["text"]
    status = [
        o for o in pregnant.of_type("Observation") if o["code"]["coding"][0]["code"] == codes.PREGNANCY_STATUS
    ]
    assert status[0]["valueCodeableConcept"]["coding"][0]["code"] == codes.SNOMED_PREGNANT
    systems = {c["system"] for cond in kidney.of_type("Condition") for c in cond["code"]["coding"]}
    assert systems == {codes.SNOMED, codes.ICD10CM}
    assert kidney.of_type("DiagnosticReport")[0]["imagingStudy"][0]["reference"].startswith("ImagingStudy/")
    assert (
        anticoagulated.of_type("MedicationRequest")[0]["medicationCodeableConcept"]["coding"][0]["code"]
        == "1364445"
    )


def test_bad_count_is_refused() -> None:
    with pytest.raises(ValueError, match="count"):
        generate_patients(0)


def test_load_twice_writes_nothing_the_second_time(fhir_client: FhirClient) -> None:
    patients = generate_patients()
    assert load_synthetic_patients(fhir_client, patients) == ["vt-demo-1", "vt-demo-2", "vt-demo-3"]
    first = {
        o["id"]: o["meta"]["versionId"]
        for o in fhir_client.search("Observation", {"patient": "vt-demo-1", "_count": "100"})
    }
    load_synthetic_patients(fhir_client, generate_patients())
    again = fhir_client.search("Observation", {"patient": "vt-demo-1", "_count": "100"})
    assert {o["id"]: o["meta"]["versionId"] for o in again} == first
    assert len(again) == len(patients[0].of_type("Observation"))
    assert fhir_client.read("Patient", "vt-demo-2")["gender"] == "female"


def test_load_rewrites_only_what_changed(fhir_client: FhirClient) -> None:
    (patient,) = generate_patients(1)
    load_synthetic_patients(fhir_client, [patient])
    condition_id = patient.of_type("Condition")[0]["id"]
    before = {
        "Patient": int(fhir_client.read("Patient", "vt-demo-1")["meta"]["versionId"]),
        "Condition": int(fhir_client.read("Condition", condition_id)["meta"]["versionId"]),
    }
    edited = SyntheticPatient(
        patient.patient_id, ({**patient.resources[0], "gender": "other"}, *patient.resources[1:])
    )
    try:
        load_synthetic_patients(fhir_client, [edited])
        assert int(fhir_client.read("Patient", "vt-demo-1")["meta"]["versionId"]) == before["Patient"] + 1
        assert int(fhir_client.read("Condition", condition_id)["meta"]["versionId"]) == before["Condition"]
    finally:
        load_synthetic_patients(fhir_client, [patient])  # the session server is shared: put it back
    assert fhir_client.read("Patient", "vt-demo-1")["gender"] == "male"

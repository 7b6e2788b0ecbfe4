"""One-line evidence texts: values, units, dates and status, never names; bounded length."""

from __future__ import annotations

from integrations.fhir.evidence_display import MAX_DISPLAY, display_of
from integrations.fhir.synthetic import generate_patients


def _first(resource_type: str, patient: int = 0, *, code: str | None = None) -> dict:
    resources = generate_patients()[patient].of_type(resource_type)
    if code is None:
        return resources[0]
    return next(r for r in resources if r.get("code", {}).get("coding", [{}])[0].get("code") == code)


def test_lab_value_unit_and_date() -> None:
    obs = {**_first("Observation", code="62238-1"), "valueQuantity": {"value": 52.0, "unit": "mL/min/1.73m2"}}
    obs["effectiveDateTime"] = "2026-10-02T08:10:00Z"
    assert display_of(obs) == "eGFR 52 mL/min/1.73m2 on 2026-10-02"


def test_blood_pressure_panel() -> None:
    text = display_of(_first("Observation", code="85354-9"))
    assert text.startswith("Blood pressure ") and " mmHg on 2026-" in text


def test_coded_value_pregnancy() -> None:
    assert display_of(_first("Observation", 1, code="82810-3")).startswith("Pregnancy status: Pregnant on ")


def test_condition_shows_status_and_both_codes() -> None:
    text = display_of(_first("Condition"))
    assert text.startswith("Condition: Diabetes mellitus type 2 (active, onset ")
    assert "SNOMED 44054006" in text and "ICD-10-CM E11.9" in text


def test_allergy_medication_and_report() -> None:
    assert display_of(_first("AllergyIntolerance")) == (
        "Allergy: Iodinated contrast media (active; criticality high; reaction Eruption of skin)"
    )
    assert display_of(_first("MedicationRequest")).startswith("Medication: metformin hydrochloride 500 MG")
    assert display_of(_first("DiagnosticReport")).startswith("Report: CT Chest on ")


def test_patient_display_has_no_name() -> None:
    patient = _first("Patient")
    assert display_of(patient) == "Patient: male, born 1957-04-12"


def test_long_text_is_cut() -> None:
    report = {**_first("DiagnosticReport"), "conclusion": "x" * 1000}
    text = display_of(report)
    assert len(text) == MAX_DISPLAY and text.endswith("…")

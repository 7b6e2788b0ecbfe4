"""Reading claims out of text and facts out of FHIR resources."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from model.report import Laterality
from model.verification import facts_from_resource
from model.verification.text_claims import clause_negated, read_claims
from model.verification.units import canonical_unit


def test_claims_separate_dates_quantities_pairs_and_bare_numbers() -> None:
    claims = read_claims("eGFR 52 mL/min/1.73m2 on 2026-10-02, BP 134/78 mmHg, type 2 diabetes (E11.9).")
    assert claims.dates == [date(2026, 10, 2)]
    assert [(q.value, q.unit) for q in claims.quantities] == [
        (Decimal("134"), "mmHg"),
        (Decimal("78"), "mmHg"),
        (Decimal("52"), "mL/min/1.73m2"),
    ]
    assert claims.numbers == [Decimal("2")]  # E11.9 is a code, not a number


def test_codes_and_words_with_digits_are_not_numbers() -> None:
    assert read_claims("HbA1c, ICD-10-CM N18.30, UID 2.25.1234, I10").numbers == []


def test_invalid_calendar_dates_are_not_dates() -> None:
    assert read_claims("on 2026-02-30").dates == []


def test_sides() -> None:
    assert read_claims("nodule in the RUL and left hilum").sides == {Laterality.RIGHT, Laterality.LEFT}
    assert read_claims("bilateral effusions").sides == {Laterality.BILATERAL}
    assert read_claims("no side named").sides == set()


@pytest.mark.parametrize(
    ("clause", "concept", "negated"),
    [
        ("No essential hypertension", {"hypertension"}, True),
        ("Essential hypertension", {"hypertension"}, False),
        ("Pneumonia, resolved", {"pneumonia"}, True),
        ("Diabetes mellitus without complications", {"diabetes", "complications"}, False),
        ("not taking metformin", {"metformin"}, True),
        ("No focal consolidation", None, True),
        ("Heart size normal", None, False),
    ],
)
def test_negation(clause: str, concept: set[str] | None, negated: bool) -> None:
    assert clause_negated(clause, concept) is negated


@pytest.mark.parametrize(
    ("a", "b"),
    [("mL/min/{1.73_m2}", "mL/min/1.73m2"), ("mm[Hg]", "mmHg"), ("10*3/uL", "10^3/uL"), ("bpm", "/min")],
)
def test_unit_spellings_agree(a: str, b: str) -> None:
    assert canonical_unit(a) == canonical_unit(b)


def test_different_units_differ() -> None:
    assert canonical_unit("mg/dL") != canonical_unit("mmol/L")
    assert canonical_unit(None) is None and canonical_unit("1") is None


def test_observation_facts() -> None:
    facts = facts_from_resource(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}], "text": "creatinine"},
            "effectiveDateTime": "2026-10-01T23:30:00-05:00",
            "valueQuantity": {"value": 1.12, "unit": "mg/dL", "code": "mg/dL"},
            "bodySite": {"coding": [{"system": "http://snomed.info/sct", "code": "24028007"}]},
        }
    )
    assert facts.quantities[0].value == Decimal("1.12") and facts.quantities[0].unit == "mg/dL"
    assert facts.dates == [date(2026, 10, 1), date(2026, 10, 2)]  # as written, and in UTC
    assert "2160-0" in facts.codes and "http://loinc.org|2160-0" in facts.codes
    assert facts.laterality == [Laterality.RIGHT]
    assert facts.asserted is None


@pytest.mark.parametrize(
    ("clinical", "verification", "asserted"),
    [("active", "confirmed", True), ("resolved", "confirmed", False), ("active", "refuted", False)],
)
def test_condition_presence(clinical: str, verification: str, asserted: bool) -> None:
    facts = facts_from_resource(
        {
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"code": clinical}]},
            "verificationStatus": {"coding": [{"code": verification}]},
            "code": {"text": "Asthma"},
        }
    )
    assert facts.asserted is asserted and facts.names == ["Asthma"]


def test_patient_facts_leave_out_the_name() -> None:
    facts = facts_from_resource(
        {
            "resourceType": "Patient",
            "name": [{"family": "Zed", "given": ["Ann"]}],
            "gender": "female",
            "birthDate": "1990-01-02",
        }
    )
    assert facts.dates == [date(1990, 1, 2)]
    assert "female" in facts.names
    assert not any("Zed" in n or "Ann" in n for n in facts.names)


def test_not_a_resource() -> None:
    with pytest.raises(ValueError, match="resourceType"):
        facts_from_resource({"id": "x"})

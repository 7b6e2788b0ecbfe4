"""The verifier, one test per rejection reason, on the synthetic patients' real FHIR resources.

Each error test starts from a statement the verifier accepts (checked in the same test), changes one
thing, and expects that exact reason; so a check that accepts everything or rejects everything fails.
"""

from __future__ import annotations

from typing import Any

import pytest

from integrations.fhir.synthetic import generate_patients
from integrations.tools.evidence import evidence_of
from model.report import DraftReport, EvidenceItem, ImageRef, Laterality, Statement
from model.verification import EvidenceFacts, RejectionReason, verify_report

PATIENTS = {p.patient_id: p for p in generate_patients(3)}
IMAGE = ImageRef(study_uid="1.2.3", series_uid="1.2.3.4", sop_uid="1.2.3.4.5", frame=0)


def resource(patient: str, rid: str) -> dict[str, Any]:
    return next(r for r in PATIENTS[patient].resources if r["id"] == rid)


def trace(patient: str) -> tuple[list[EvidenceItem], dict[str, EvidenceFacts]]:
    items, facts = [], {}
    for r in PATIENTS[patient].resources:
        item, item_facts = evidence_of(r)
        items.append(item)
        facts[item.id] = item_facts
    return items, facts


def verdict(text: str, cites: list[str], patient: str = "vt-demo-1", **fields: Any) -> tuple[bool, Any]:
    items, facts = trace(patient)
    report = DraftReport(findings=[Statement(text=text, citations=cites, **fields)], untrained_model=False)
    verified = verify_report(report, items, [IMAGE], facts)
    (only,) = verified.verdicts
    return only.supported, only.reason


def lab(patient: str, label: str, index: int = -1) -> tuple[str, dict[str, Any]]:
    """Citation id and resource of a patient's ``index``-th result of ``label`` (code.text)."""
    labs = [
        r
        for r in PATIENTS[patient].resources
        if r["resourceType"] == "Observation" and r["code"].get("text") == label
    ]
    chosen = labs[index]
    return f"Observation/{chosen['id']}", chosen


def value_text(obs: dict[str, Any]) -> tuple[str, str, str]:
    q = obs["valueQuantity"]
    return f"{q['value']:g}", q["unit"], obs["effectiveDateTime"][:10]


def test_supported_statements_are_kept_and_rejected_ones_removed() -> None:
    cite, obs = lab("vt-demo-1", "eGFR")
    value, unit, day = value_text(obs)
    items, facts = trace("vt-demo-1")
    good = Statement(text=f"eGFR {value} {unit} on {day}.", citations=[cite])
    bad = Statement(text="Nodule in the left lung.", citations=[])
    report = DraftReport(findings=[good, bad], impression=[good], untrained_model=True)
    verified = verify_report(report, items, [], facts)
    assert [v.supported for v in verified.verdicts] == [True, False, True]
    assert verified.report.findings == [good] and verified.report.impression == [good]
    assert verified.report.untrained_model is True
    assert [v.reason for v in verified.rejected] == [RejectionReason.MISSING_CITATION]
    assert verified.verdicts[2].section == "impression"


def test_missing_citation() -> None:
    assert verdict("Essential hypertension.", ["Condition/vt-demo-1-condition-2"]) == (True, None)
    assert verdict("Essential hypertension.", []) == (False, RejectionReason.MISSING_CITATION)


def test_unknown_citation() -> None:
    assert verdict("Essential hypertension.", ["Condition/vt-demo-1-condition-2"])[0]
    assert verdict("Essential hypertension.", ["Condition/vt-demo-1-condition-99"]) == (
        False,
        RejectionReason.UNKNOWN_CITATION,
    )
    # another patient's resource is not in this trace either
    assert verdict("Asthma.", ["Condition/vt-demo-2-condition-1"]) == (
        False,
        RejectionReason.UNKNOWN_CITATION,
    )


def test_unrelated_evidence() -> None:
    cite, obs = lab("vt-demo-1", "eGFR")
    value, unit, day = value_text(obs)
    potassium, _ = lab("vt-demo-1", "potassium")
    text = f"eGFR {value} {unit} on {day}."
    assert verdict(text, [cite]) == (True, None)
    assert verdict(text, [potassium]) == (False, RejectionReason.UNRELATED_EVIDENCE)
    assert verdict(text, [cite, "Condition/vt-demo-1-condition-2"]) == (
        False,
        RejectionReason.UNRELATED_EVIDENCE,
    )


def test_related_through_a_shared_code_alone() -> None:
    text = "Known diagnosis, noted."
    assert verdict(text, ["Condition/vt-demo-1-condition-2"]) == (False, RejectionReason.UNRELATED_EVIDENCE)
    assert verdict(text, ["Condition/vt-demo-1-condition-2"], codes=["I10"]) == (True, None)


@pytest.mark.parametrize("label", ["eGFR", "creatinine", "potassium", "HbA1c", "hemoglobin"])
def test_number_mismatch(label: str) -> None:
    cite, obs = lab("vt-demo-1", label)
    value, unit, day = value_text(obs)
    assert verdict(f"{label} {value} {unit} on {day}.", [cite]) == (True, None)
    wrong = f"{float(value) * 1.3 + 1:g}"
    assert verdict(f"{label} {wrong} {unit} on {day}.", [cite]) == (False, RejectionReason.NUMBER_MISMATCH)
    assert verdict(f"{label} {wrong} on {day}.", [cite]) == (False, RejectionReason.NUMBER_MISMATCH)


def test_rounding_one_place_is_accepted_but_not_more() -> None:
    cite, obs = lab("vt-demo-1", "creatinine")
    obs_value = obs["valueQuantity"]["value"]
    assert len(str(obs_value).split(".")[1]) == 2  # the generator writes two decimals
    one_place = f"{round(obs_value, 1):.1f}"
    assert verdict(f"creatinine {one_place} mg/dL", [cite]) == (True, None)
    assert verdict(f"creatinine {round(obs_value):d} mg/dL", [cite]) == (
        False,
        RejectionReason.NUMBER_MISMATCH,
    )


def test_unit_mismatch() -> None:
    cite, obs = lab("vt-demo-1", "potassium")
    value, _, day = value_text(obs)
    assert verdict(f"potassium {value} mmol/L on {day}.", [cite]) == (True, None)
    assert verdict(f"potassium {value} mEq/L on {day}.", [cite]) == (False, RejectionReason.UNIT_MISMATCH)
    assert verdict(f"potassium {value} mg/dL on {day}.", [cite]) == (False, RejectionReason.UNIT_MISMATCH)


def test_ucum_code_display_and_aliases_all_match() -> None:
    cite, obs = lab("vt-demo-1", "eGFR")
    value, _, _ = value_text(obs)
    for unit in ("mL/min/1.73m2", "mL/min/{1.73_m2}", "mL/min/1.73 m2"):
        assert verdict(f"eGFR {value} {unit}", [cite]) == (True, None), unit
    bp = next(r for r in PATIENTS["vt-demo-1"].resources if r.get("code", {}).get("text") == "Blood pressure")
    sys_v, dia_v = (c["valueQuantity"]["value"] for c in bp["component"])
    cite_bp = f"Observation/{bp['id']}"
    assert verdict(f"Blood pressure {sys_v}/{dia_v} mmHg", [cite_bp]) == (True, None)
    assert verdict(f"Blood pressure {sys_v}/{dia_v + 7} mmHg", [cite_bp]) == (
        False,
        RejectionReason.NUMBER_MISMATCH,
    )


def test_date_mismatch() -> None:
    cite, obs = lab("vt-demo-1", "eGFR")
    value, unit, day = value_text(obs)
    assert verdict(f"eGFR {value} {unit} on {day}.", [cite]) == (True, None)
    year, month, dom = day.split("-")
    shifted = f"{year}-{month}-{int(dom) % 28 + 1:02d}"
    assert verdict(f"eGFR {value} {unit} on {shifted}.", [cite]) == (False, RejectionReason.DATE_MISMATCH)


def test_dates_written_in_words() -> None:
    cite, obs = lab("vt-demo-1", "eGFR")
    value, unit, day = value_text(obs)
    from datetime import date

    d = date.fromisoformat(day)
    words = f"{d.day} {d.strftime('%B')} {d.year}"
    assert verdict(f"eGFR {value} {unit} on {words}.", [cite]) == (True, None)
    other = f"{d.day} {'March' if d.month != 3 else 'April'} {d.year}"
    assert verdict(f"eGFR {value} {unit} on {other}.", [cite]) == (False, RejectionReason.DATE_MISMATCH)


def test_laterality_mismatch_in_text_and_field() -> None:
    report_id = "DiagnosticReport/vt-demo-1-report-1"
    good = "Prior CT Chest: solitary 6 mm solid nodule in the right upper lobe."
    assert verdict(good, [report_id], laterality=Laterality.RIGHT) == (True, None)
    flipped = good.replace("right", "left")
    assert verdict(flipped, [report_id]) == (False, RejectionReason.LATERALITY_MISMATCH)
    assert verdict(good, [report_id], laterality=Laterality.LEFT) == (
        False,
        RejectionReason.LATERALITY_MISMATCH,
    )
    assert verdict("Prior CT Chest: solitary 6 mm solid nodule in the RUL.", [report_id]) == (True, None)
    assert verdict("Prior CT Chest: solitary 6 mm solid nodule in the LUL.", [report_id]) == (
        False,
        RejectionReason.LATERALITY_MISMATCH,
    )


def test_a_side_needs_evidence_that_states_one_unless_an_image_is_cited() -> None:
    assert verdict("Essential hypertension, left.", ["Condition/vt-demo-1-condition-2"]) == (
        False,
        RejectionReason.LATERALITY_MISMATCH,
    )
    assert verdict("Consolidation in the left lower lobe.", [IMAGE.citation_id]) == (True, None)


def test_an_image_without_facts_supports_no_numbers_or_dates() -> None:
    assert verdict("Consolidation in the left lower lobe.", [IMAGE.citation_id]) == (True, None)
    assert verdict("A 14 mm nodule.", [IMAGE.citation_id]) == (False, RejectionReason.NUMBER_MISMATCH)


def test_negation_mismatch_structured_status() -> None:
    active = "Condition/vt-demo-1-condition-2"
    assert verdict("Active problem: essential hypertension.", [active]) == (True, None)
    assert verdict("No essential hypertension.", [active]) == (False, RejectionReason.NEGATION_MISMATCH)
    resolved = "Condition/vt-demo-1-condition-4"
    assert verdict("Pneumonia, resolved.", [resolved]) == (True, None)
    assert verdict("Active pneumonia.", [resolved]) == (False, RejectionReason.NEGATION_MISMATCH)
    allergy = "AllergyIntolerance/vt-demo-1-allergy-1"
    assert verdict("Allergy to iodinated contrast media.", [allergy]) == (True, None)
    assert verdict("No allergy to iodinated contrast media.", [allergy]) == (
        False,
        RejectionReason.NEGATION_MISMATCH,
    )
    medication = "MedicationRequest/vt-demo-1-medication-1"
    assert verdict("Takes metformin hydrochloride 500 MG Oral Tablet.", [medication]) == (True, None)
    assert verdict("Metformin was discontinued.", [medication]) == (False, RejectionReason.NEGATION_MISMATCH)


def test_negation_mismatch_coded_value() -> None:
    pregnant = "Observation/vt-demo-2-pregnancy-1"
    not_pregnant = "Observation/vt-demo-3-pregnancy-1"
    assert verdict("Pregnancy status: pregnant.", [pregnant], patient="vt-demo-2") == (True, None)
    assert verdict("Pregnancy status: not pregnant.", [pregnant], patient="vt-demo-2") == (
        False,
        RejectionReason.NEGATION_MISMATCH,
    )
    assert verdict("Pregnancy status: not pregnant.", [not_pregnant], patient="vt-demo-3") == (True, None)
    assert verdict("Pregnancy status: pregnant.", [not_pregnant], patient="vt-demo-3") == (
        False,
        RejectionReason.NEGATION_MISMATCH,
    )


def test_negation_mismatch_in_report_narrative() -> None:
    report_id = "DiagnosticReport/vt-demo-3-report-1"
    assert verdict("Prior XR Chest: no focal consolidation.", [report_id], patient="vt-demo-3") == (
        True,
        None,
    )
    assert verdict("Prior XR Chest: focal consolidation.", [report_id], patient="vt-demo-3") == (
        False,
        RejectionReason.NEGATION_MISMATCH,
    )
    assert verdict(
        "Prior XR Chest: hyperinflated lungs consistent with COPD.", [report_id], patient="vt-demo-3"
    )[0]
    assert verdict(
        "Prior XR Chest: no hyperinflated lungs consistent with COPD.", [report_id], patient="vt-demo-3"
    ) == (False, RejectionReason.NEGATION_MISMATCH)


def test_without_in_a_condition_name_is_not_a_negation() -> None:
    assert verdict(
        "Type 2 diabetes mellitus without complications (E11.9).", ["Condition/vt-demo-1-condition-1"]
    ) == (True, None)


def test_facts_missing_fall_back_to_the_display() -> None:
    cite, obs = lab("vt-demo-1", "eGFR")
    value, unit, day = value_text(obs)
    items, _ = trace("vt-demo-1")
    report = DraftReport(
        findings=[
            Statement(text=f"eGFR {value} {unit} on {day}.", citations=[cite]),
            Statement(text=f"eGFR {float(value) + 9:g} {unit} on {day}.", citations=[cite]),
        ],
        untrained_model=False,
    )
    verified = verify_report(report, items, [])
    assert [v.reason for v in verified.verdicts] == [None, RejectionReason.NUMBER_MISMATCH]

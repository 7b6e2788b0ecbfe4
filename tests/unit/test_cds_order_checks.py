"""The imaging-order safety checks on hand-built FHIR resources: each fires, cites, and stays quiet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cds.services.imaging_orders import contrast_agent, draft_imaging_orders, read_imaging_order
from cds.services.order_safety_checks import (
    CheckContext,
    contrast_allergy_card,
    duplicate_imaging_card,
    pregnancy_card,
    renal_function_card,
)

NOW = datetime(2026, 10, 2, 12, tzinfo=UTC)
CTX = CheckContext(patient_id="p1", now=NOW)


def _day(days_ago: int) -> str:
    return (NOW - timedelta(days=days_ago)).date().isoformat()


def order(text: str, oid: str = "o1", body_site: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": oid,
        "status": "draft",
        "intent": "order",
        "code": {"text": text},
        "subject": {"reference": "Patient/p1"},
    }
    if body_site:
        resource["bodySite"] = [{"text": body_site}]
    return resource


def allergy(
    text: str, *, status: str = "active", criticality: str = "low", aid: str = "a1"
) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "id": aid,
        "meta": {"versionId": "3"},
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                    "code": status,
                }
            ]
        },
        "criticality": criticality,
        "code": {"text": text},
        "patient": {"reference": "Patient/p1"},
    }


def lab(code: str, value: float, unit: str, days_ago: int, oid: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "effectiveDateTime": _day(days_ago),
        "valueQuantity": {"value": value, "unit": unit},
    }


@pytest.mark.parametrize(
    ("text", "agent"),
    [
        ("CT abdomen with IV contrast", "iodinated"),
        ("CT chest without contrast", None),
        ("CT head w/o contrast", None),
        ("CT abdomen and pelvis with and without contrast", "iodinated"),
        ("CTA chest", "iodinated"),
        ("MRI brain with gadolinium", "gadolinium"),
        ("MRI knee with contrast", "gadolinium"),
        ("MRI lumbar spine", None),
        ("XR chest 2 views", None),
    ],
)
def test_contrast_agent_from_order_text(text: str, agent: str | None) -> None:
    parsed = read_imaging_order(order(text))
    assert parsed is not None
    assert parsed.contrast == agent
    assert contrast_agent(parsed.modality, text.lower()) == agent


def test_non_imaging_orders_and_unselected_orders_are_ignored() -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": order("CBC with differential", "lab")},
            {"resource": order("CT chest with contrast", "ct")},
            {"resource": order("MRI brain", "mr")},
        ],
    }
    assert [o.reference for o in draft_imaging_orders(bundle, None)] == [
        "ServiceRequest/ct",
        "ServiceRequest/mr",
    ]
    assert [o.reference for o in draft_imaging_orders(bundle, ["ServiceRequest/mr"])] == ["ServiceRequest/mr"]


def test_iodinated_allergy_fires_on_ct_with_contrast_and_cites_it() -> None:
    ct = read_imaging_order(order("CT abdomen with contrast"))
    assert ct is not None
    card = contrast_allergy_card(ct, [allergy("Iodinated contrast media", criticality="high")], CTX)
    assert card is not None
    assert card.indicator == "critical"
    assert card.extension == {
        "veritrace.evidence": ["AllergyIntolerance/a1/_history/3"],
        "veritrace.order": "ServiceRequest/o1",
    }
    assert card.selectionBehavior == "at-most-one"
    assert card.suggestions and card.suggestions[0].actions
    action = card.suggestions[0].actions[0]
    assert (action.type, action.resourceId) == ("delete", "ServiceRequest/o1")


def test_allergy_to_the_other_agent_or_inactive_does_not_fire() -> None:
    ct = read_imaging_order(order("CT abdomen with contrast"))
    mr = read_imaging_order(order("MRI brain with contrast"))
    plain = read_imaging_order(order("CT head without contrast"))
    assert ct is not None and mr is not None and plain is not None
    assert contrast_allergy_card(ct, [allergy("Gadolinium-based contrast agent")], CTX) is None
    assert contrast_allergy_card(mr, [allergy("Iodinated contrast media")], CTX) is None
    assert contrast_allergy_card(ct, [allergy("Iodinated contrast media", status="resolved")], CTX) is None
    assert contrast_allergy_card(plain, [allergy("Iodinated contrast media")], CTX) is None
    card = contrast_allergy_card(mr, [allergy("Gadolinium-based contrast agent")], CTX)
    assert card is not None and card.indicator == "warning"
    assert contrast_allergy_card(mr, [allergy("Contrast media allergy (unspecified)")], CTX) is not None


def test_renal_function_uses_the_most_recent_egfr_with_its_date() -> None:
    ct = read_imaging_order(order("CT abdomen with contrast"))
    assert ct is not None
    labs = [lab("62238-1", 70, "mL/min/1.73m2", 60, "old"), lab("62238-1", 24, "mL/min/1.73m2", 3, "new")]
    card = renal_function_card(ct, labs, CTX)
    assert card is not None and card.indicator == "warning"
    assert f"eGFR 24 mL/min/1.73m2 on {_day(3)}" in card.summary
    assert card.extension is not None and card.extension["veritrace.evidence"] == ["Observation/new"]
    assert renal_function_card(ct, [lab("62238-1", 12, "mL/min/1.73m2", 1, "x")], CTX).indicator == "critical"  # type: ignore[union-attr]
    assert renal_function_card(ct, [lab("62238-1", 38, "mL/min/1.73m2", 1, "x")], CTX).indicator == "info"  # type: ignore[union-attr]
    assert renal_function_card(ct, [lab("62238-1", 80, "mL/min/1.73m2", 1, "x")], CTX) is None


def test_renal_creatinine_fallback_and_missing_result_suggests_a_creatinine_order() -> None:
    mr = read_imaging_order(order("MRI brain with gadolinium"))
    assert mr is not None
    high = renal_function_card(mr, [lab("2160-0", 2.3, "mg/dL", 5, "cr")], CTX)
    assert high is not None and "Creatinine 2.3 mg/dL" in high.summary
    assert renal_function_card(mr, [lab("2160-0", 90, "umol/L", 5, "cr")], CTX) is None  # 1.02 mg/dL
    stale = renal_function_card(mr, [lab("62238-1", 20, "mL/min/1.73m2", 200, "old")], CTX)
    assert stale is not None and stale.indicator == "info"
    assert _day(200) in (stale.detail or "")
    assert stale.suggestions is not None
    create = stale.suggestions[0].actions[0]  # type: ignore[index]
    assert create.type == "create" and create.resource is not None
    assert create.resource["code"]["coding"][0]["code"] == "2160-0"
    assert create.resource["subject"] == {"reference": "Patient/p1"}


def _pregnancy(value_code: str, display: str, days_ago: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "preg",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "82810-3"}]},
        "effectiveDateTime": _day(days_ago),
        "valueCodeableConcept": {
            "coding": [{"system": "http://snomed.info/sct", "code": value_code, "display": display}]
        },
    }


def test_pregnancy_fires_for_ionising_or_gadolinium_only() -> None:
    pregnant = [_pregnancy("77386006", "Pregnant", 12)]
    female = {"resourceType": "Patient", "id": "p1", "gender": "female"}
    for text, fires in [
        ("CT chest", True),
        ("XR chest", True),
        ("MRI brain with gadolinium", True),
        ("MRI brain", False),
        ("US abdomen", False),
    ]:
        parsed = read_imaging_order(order(text))
        assert parsed is not None
        assert (pregnancy_card(parsed, pregnant, female, CTX) is not None) is fires, text
    ct = read_imaging_order(order("CT chest"))
    assert ct is not None
    assert pregnancy_card(ct, [_pregnancy("60001007", "Not pregnant", 12)], female, CTX) is None
    assert pregnancy_card(ct, [_pregnancy("77386006", "Pregnant", 400)], female, CTX) is None


def _study(modality: str, description: str, days_ago: int, sid: str = "s1") -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": sid,
        "status": "available",
        "started": _day(days_ago) + "T10:00:00Z",
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": modality}],
        "description": description,
    }


def test_duplicate_imaging_same_modality_and_region_within_30_days() -> None:
    ct_chest = read_imaging_order(order("CT chest with contrast"))
    assert ct_chest is not None
    card = duplicate_imaging_card(ct_chest, [_study("CT", "CT Chest", 10)], CTX)
    assert card is not None and "10 day(s) ago" in card.summary and "chest" in card.summary
    assert duplicate_imaging_card(ct_chest, [_study("CT", "CT Chest", 45)], CTX) is None
    assert duplicate_imaging_card(ct_chest, [_study("MR", "MRI Chest", 10)], CTX) is None
    assert duplicate_imaging_card(ct_chest, [_study("CT", "CT Head", 10)], CTX) is None

"""Short, one-line texts for FHIR resources, as the model sees them in its prompt and cites them.

They carry the clinical facts (test, value, unit, date, status) and never the patient's name or
identifiers: the model does not need them, and prompts land in traces.
"""

from __future__ import annotations

from typing import Any

from integrations.fhir import codes

MAX_DISPLAY = 400
_SYSTEM_NAMES = {
    codes.SNOMED: "SNOMED",
    codes.ICD10CM: "ICD-10-CM",
    codes.LOINC: "LOINC",
    codes.RXNORM: "RxNorm",
}


def display_of(resource: dict[str, Any]) -> str:
    """One line for any resource type Veritrace reads; at most ``MAX_DISPLAY`` characters."""
    resource_type = resource.get("resourceType")
    render = _RENDERERS.get(str(resource_type))
    text = render(resource) if render else f"{resource_type} {resource.get('id')}"
    return text if len(text) <= MAX_DISPLAY else text[: MAX_DISPLAY - 1] + "…"


def _patient(r: dict[str, Any]) -> str:
    return f"Patient: {r.get('gender', 'unknown gender')}, born {r.get('birthDate', 'unknown')}"


def _observation(r: dict[str, Any]) -> str:
    label = _label(r.get("code"))
    when = _date(
        r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start") or r.get("issued")
    )
    on = f" on {when}" if when else ""
    if "valueQuantity" in r:
        return f"{label} {_quantity(r['valueQuantity'])}{on}"
    if "valueCodeableConcept" in r:
        return f"{label}: {_concept_text(r['valueCodeableConcept'])}{on}"
    if "valueString" in r:
        return f"{label}: {r['valueString']}{on}"
    components = [c for c in r.get("component") or [] if "valueQuantity" in c]
    codes_of = {_first_code(c.get("code")): c["valueQuantity"] for c in components}
    systolic, diastolic = codes_of.get("8480-6"), codes_of.get("8462-4")
    if systolic and diastolic:
        return f"Blood pressure {_number(systolic.get('value'))}/{_quantity(diastolic)}{on}"
    if components:
        parts = ", ".join(f"{_label(c.get('code'))} {_quantity(c['valueQuantity'])}" for c in components)
        return f"{label}: {parts}{on}"
    return f"{label}: no value ({r.get('status', 'unknown status')}){on}"


def _condition(r: dict[str, Any]) -> str:
    status = _first_code(r.get("clinicalStatus")) or "unknown status"
    onset = _date(r.get("onsetDateTime") or (r.get("onsetPeriod") or {}).get("start"))
    since = f", onset {onset}" if onset else ""
    coded = ", ".join(
        f"{_SYSTEM_NAMES.get(c.get('system', ''), c.get('system'))} {c.get('code')}"
        for c in (r.get("code") or {}).get("coding", [])
    )
    return f"Condition: {_concept_text(r.get('code'))} ({status}{since}{'; ' + coded if coded else ''})"


def _medication_request(r: dict[str, Any]) -> str:
    med = (
        _concept_text(r.get("medicationCodeableConcept"))
        if "medicationCodeableConcept" in r
        else ((r.get("medicationReference") or {}).get("display") or "medication")
    )
    dosage = "; ".join(d["text"] for d in r.get("dosageInstruction") or [] if d.get("text"))
    authored = _date(r.get("authoredOn"))
    details = ", ".join(x for x in (r.get("status"), f"ordered {authored}" if authored else "") if x)
    return f"Medication: {med}{' - ' + dosage if dosage else ''} ({details})"


def _allergy(r: dict[str, Any]) -> str:
    status = _first_code(r.get("clinicalStatus")) or "unknown status"
    reactions = [
        _concept_text(m) for reaction in r.get("reaction") or [] for m in reaction.get("manifestation") or []
    ]
    details = [status]
    if r.get("criticality"):
        details.append(f"criticality {r['criticality']}")
    if reactions:
        details.append("reaction " + ", ".join(reactions))
    return f"Allergy: {_concept_text(r.get('code'))} ({'; '.join(details)})"


def _diagnostic_report(r: dict[str, Any]) -> str:
    when = _date(
        r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start") or r.get("issued")
    )
    conclusion = r.get("conclusion")
    on = f" on {when}" if when else ""
    head = f"Report: {_concept_text(r.get('code'))}{on} ({r.get('status', 'unknown')})"
    return f"{head}: {conclusion}" if conclusion else head


_RENDERERS = {
    "Patient": _patient,
    "Observation": _observation,
    "Condition": _condition,
    "MedicationRequest": _medication_request,
    "AllergyIntolerance": _allergy,
    "DiagnosticReport": _diagnostic_report,
}


def _label(concept: dict[str, Any] | None) -> str:
    """Our short lab label for a known LOINC code, else the concept's text."""
    for coding in (concept or {}).get("coding", []):
        if coding.get("system") == codes.LOINC and coding.get("code") in codes.BY_LOINC:
            return codes.BY_LOINC[coding["code"]].label
    return _concept_text(concept)


def _concept_text(concept: dict[str, Any] | None) -> str:
    concept = concept or {}
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding", []):
        if coding.get("display"):
            return str(coding["display"])
    first = next(iter(concept.get("coding", [])), None)
    return f"{first.get('system')}|{first.get('code')}" if first else "uncoded"


def _first_code(concept: dict[str, Any] | None) -> str | None:
    first = next(iter((concept or {}).get("coding", [])), None)
    return str(first["code"]) if first and first.get("code") else None


def _quantity(q: dict[str, Any]) -> str:
    unit = q.get("unit") or q.get("code") or ""
    if unit == "{INR}":
        unit = ""
    return f"{_number(q.get('value'))} {unit}".strip()


def _number(value: Any) -> str:
    return format(value, "g") if isinstance(value, int | float) else str(value)


def _date(value: Any) -> str | None:
    return str(value)[:10] if value else None

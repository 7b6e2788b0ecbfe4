"""Facts of a FHIR R4 resource (a plain JSON dict): what a statement citing it may say.

Pure functions over the resource's JSON, so ``model`` stays free of HTTP: whoever read the resource
(the FHIR tools, the context assembly) extracts its facts next to its evidence item.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from model.report import Laterality
from model.verification.facts import EvidenceFacts, FactQuantity
from model.verification.text_claims import clause_negated, clauses, read_claims

# SNOMED CT laterality qualifiers and DICOM (0020,0060) / (0020,0062) values.
_SIDE_CODES = {
    "7771000": Laterality.LEFT,
    "24028007": Laterality.RIGHT,
    "51440002": Laterality.BILATERAL,
    "L": Laterality.LEFT,
    "R": Laterality.RIGHT,
    "B": Laterality.BILATERAL,
}
_PRESENT = frozenset({"active", "recurrence", "relapse", "confirmed", "provisional", "unconfirmed"})
_ABSENT = frozenset(
    {
        "inactive",
        "remission",
        "resolved",
        "refuted",
        "entered-in-error",
        "stopped",
        "cancelled",
        "completed",
        "not-done",
        "not-taken",
        "revoked",
    }
)
_DATE_FIELDS = (
    "effectiveDateTime",
    "issued",
    "onsetDateTime",
    "abatementDateTime",
    "recordedDate",
    "authoredOn",
    "performedDateTime",
    "started",
    "birthDate",
    "occurrenceDateTime",
    "lastOccurrence",
    "dateAsserted",
    "date",
)
_PERIOD_FIELDS = ("effectivePeriod", "performedPeriod", "onsetPeriod", "abatementPeriod", "period")
_NARRATIVE_FIELDS = ("conclusion", "description")


def facts_from_resource(resource: dict[str, Any]) -> EvidenceFacts:
    """Extract the facts of one FHIR R4 resource; raises ``ValueError`` when it is not a resource.

    Unknown resource types still yield their codes, names, dates, quantities and narrative; only the
    present / absent reading is type-specific.
    """
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise ValueError("facts_from_resource takes a FHIR resource dict with a resourceType")
    resource_type: str = resource["resourceType"]
    codes: list[str] = []
    names: list[str] = []
    for concept in _concepts(resource):
        _add_concept(concept, codes, names)
    if resource_type == "ImagingStudy" and isinstance(resource.get("description"), str):
        names.append(resource["description"])
    if resource_type == "Patient":
        names += _patient_names(resource)
    quantities = [q for q in _quantities(resource)]
    dates = sorted(set(_dates(resource)))
    narrative = [text for text in _narrative(resource)]
    numbers: list[Decimal] = []
    sides = set(_coded_sides(resource))
    for text in [*narrative, *names]:
        claims = read_claims(text)
        quantities += [FactQuantity(value=q.value, unit=q.unit) for q in claims.quantities]
        numbers += claims.numbers
        dates = sorted(set(dates) | set(claims.dates))
    for text in narrative:
        sides |= read_claims(text).sides
    return EvidenceFacts(
        resource_type=resource_type,
        quantities=quantities,
        numbers=numbers,
        dates=dates,
        codes=list(dict.fromkeys(codes)),
        names=list(dict.fromkeys(names)),
        narrative=[c for text in narrative for c in clauses(text)],
        laterality=sorted(sides, key=lambda s: s.value),
        asserted=_asserted(resource, resource_type),
    )


def _concepts(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The CodeableConcepts that name what the resource is about (not its category or status)."""
    for key in ("code", "medicationCodeableConcept", "valueCodeableConcept", "vaccineCode", "type"):
        value = resource.get(key)
        if isinstance(value, dict):
            yield value
        elif key == "type" and isinstance(value, list):
            yield from (v for v in value if isinstance(v, dict))
    for component in resource.get("component") or []:
        if isinstance(component, dict):
            for key in ("code", "valueCodeableConcept"):
                if isinstance(component.get(key), dict):
                    yield component[key]
    for code in resource.get("conclusionCode") or []:
        if isinstance(code, dict):
            yield code
    for modality in resource.get("modality") or []:
        if isinstance(modality, dict):
            yield {"coding": [modality]}


def _add_concept(concept: dict[str, Any], codes: list[str], names: list[str]) -> None:
    if isinstance(concept.get("text"), str) and concept["text"].strip():
        names.append(concept["text"].strip())
    for coding in concept.get("coding") or []:
        if not isinstance(coding, dict):
            continue
        code = coding.get("code")
        if isinstance(code, str) and code:
            codes.append(code)
            if isinstance(coding.get("system"), str):
                codes.append(f"{coding['system']}|{code}")
        if isinstance(coding.get("display"), str) and coding["display"].strip():
            names.append(coding["display"].strip())


def _patient_names(resource: dict[str, Any]) -> list[str]:
    """Words a demographics statement uses: the administrative gender and the words for birth and age.

    The patient's name is deliberately not a fact: statements never need it and it must not spread.
    """
    names = ["born", "birth date", "date of birth", "age", "year-old", "sex", "gender"]
    if isinstance(resource.get("gender"), str):
        names.append(resource["gender"])
    if resource.get("deceasedBoolean") is True or resource.get("deceasedDateTime"):
        names.append("deceased")
    return names


def _quantity(raw: Any) -> FactQuantity | None:
    if not isinstance(raw, dict) or raw.get("value") is None:
        return None
    try:
        value = Decimal(str(raw["value"]))
    except InvalidOperation:
        return None
    unit = raw.get("code") or raw.get("unit")
    return FactQuantity(value=value, unit=unit if isinstance(unit, str) else None)


def _quantities(resource: dict[str, Any]) -> Iterator[FactQuantity]:
    """valueQuantity, component values, and a Quantity's display unit as a second spelling."""
    holders: list[dict[str, Any]] = [resource]
    holders += [c for c in resource.get("component") or [] if isinstance(c, dict)]
    for holder in holders:
        raw = holder.get("valueQuantity")
        quantity = _quantity(raw)
        if quantity is None:
            continue
        yield quantity
        assert isinstance(raw, dict)
        display = raw.get("unit")
        if isinstance(display, str) and display and display != quantity.unit:
            yield FactQuantity(value=quantity.value, unit=display)
        if isinstance(holder.get("valueInteger"), int):
            yield FactQuantity(value=Decimal(holder["valueInteger"]))


def _dates(resource: dict[str, Any]) -> Iterator[date]:
    for key in _DATE_FIELDS:
        yield from _date_variants(resource.get(key))
    for key in _PERIOD_FIELDS:
        period = resource.get(key)
        if isinstance(period, dict):
            yield from _date_variants(period.get("start"))
            yield from _date_variants(period.get("end"))


def _date_variants(raw: Any) -> Iterable[date]:
    """The date as written and, for a date-time with an offset, the same instant's UTC date."""
    if not isinstance(raw, str) or len(raw) < 10:
        return []
    try:
        written = date.fromisoformat(raw[:10])
    except ValueError:
        return []
    variants = {written}
    if len(raw) > 10:
        with contextlib.suppress(ValueError):
            variants.add(datetime.fromisoformat(raw.replace("Z", "+00:00")).astimezone(UTC).date())
    return variants


def _narrative(resource: dict[str, Any]) -> Iterator[str]:
    for key in _NARRATIVE_FIELDS:
        value = resource.get(key)
        if isinstance(value, str) and value.strip():
            yield value.strip()
    for dosage in resource.get("dosageInstruction") or []:
        if isinstance(dosage, dict) and isinstance(dosage.get("text"), str):
            yield dosage["text"]
    for note in resource.get("note") or []:
        if isinstance(note, dict) and isinstance(note.get("text"), str):
            yield note["text"]
    for reaction in resource.get("reaction") or []:
        for manifestation in (reaction or {}).get("manifestation") or []:
            for coding in (manifestation or {}).get("coding") or []:
                if isinstance(coding, dict) and isinstance(coding.get("display"), str):
                    yield coding["display"]


def _coded_sides(resource: dict[str, Any]) -> Iterator[Laterality]:
    """Sides from bodySite codings and qualifiers, and ImagingStudy series laterality."""
    sites: list[Any] = (
        list(resource.get("bodySite") or []) if isinstance(resource.get("bodySite"), list) else []
    )
    if isinstance(resource.get("bodySite"), dict):
        sites.append(resource["bodySite"])
    for series in resource.get("series") or []:
        if isinstance(series, dict):
            for key in ("laterality", "bodySite"):
                if isinstance(series.get(key), dict):
                    sites.append({"coding": [series[key]]} if "code" in series[key] else series[key])
    for site in sites:
        if not isinstance(site, dict):
            continue
        for coding in site.get("coding") or []:
            if isinstance(coding, dict) and coding.get("code") in _SIDE_CODES:
                yield _SIDE_CODES[coding["code"]]
        if isinstance(site.get("text"), str):
            yield from read_claims(site["text"]).sides


def _status_code(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for coding in value.get("coding") or []:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                code: str = coding["code"]
                return code
    return None


def _asserted(resource: dict[str, Any], resource_type: str) -> bool | None:
    """Present (True), absent (False) or not applicable (None), from status fields or a coded value."""
    if resource_type in ("Condition", "AllergyIntolerance"):
        verification = _status_code(resource.get("verificationStatus"))
        if verification in ("refuted", "entered-in-error"):
            return False
        clinical = _status_code(resource.get("clinicalStatus"))
        if clinical is None:
            return True
        return clinical in _PRESENT
    if resource_type in ("MedicationRequest", "MedicationStatement", "Procedure"):
        status = _status_code(resource.get("status"))
        if resource_type == "Procedure":
            return status not in ("not-done", "entered-in-error")
        return status is not None and status not in _ABSENT
    if resource_type == "Observation":
        if isinstance(resource.get("valueBoolean"), bool):
            return bool(resource["valueBoolean"])
        value = resource.get("valueCodeableConcept")
        if isinstance(value, dict):
            text = value.get("text") or next(
                (c.get("display") for c in value.get("coding") or [] if isinstance(c, dict)), ""
            )
            return not clause_negated(str(text or ""))
    return None

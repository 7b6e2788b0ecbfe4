"""Evidence-grounded safety checks for one imaging order, computed from FHIR data in milliseconds.

Each check reads only the resources it names, returns at most one card, and the card cites every
resource it used (``extension["veritrace.evidence"]`` as ``Type/id/_history/version`` and in the detail
text) so a clinician can see exactly why it fired. Thresholds: eGFR < 30 mL/min/1.73m2 is the usual
point where both iodinated (contrast-associated AKI) and group II gadolinium (NSF) guidance asks for a
risk/benefit decision; < 45 is flagged for iodinated contrast as information; creatinine > 1.5 mg/dL
stands in when no eGFR exists; a renal result older than 90 days is not current; a pregnancy status
within 300 days counts; imaging of the same modality and body region within 30 days is a duplicate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cds.cards import Action, Card, Indicator, Suggestion, shorten_summary
from cds.hook_call import override_reasons, source
from cds.services.imaging_orders import IONISING, ImagingOrder, codes_of, regions_of, texts_of

LOINC = "http://loinc.org"
EGFR_CODES = frozenset(
    {"62238-1", "98979-8", "33914-3", "48642-3", "48643-4", "50044-7", "88293-6", "88294-4"}
)
CREATININE_CODES = frozenset({"2160-0", "38483-4"})
PREGNANCY_CODES = frozenset({"82810-3", "11449-6"})
SNOMED_PREGNANT = "77386006"
RESULT_STATUSES = frozenset({"final", "amended", "corrected"})
RENAL_CURRENT_DAYS = 90
PREGNANCY_CURRENT_DAYS = 300
DUPLICATE_WINDOW_DAYS = 30
UMOL_PER_MG_DL = 88.4

AGENT_WORDS = {
    "iodinated": (
        "iodinated",
        "iodine",
        "iohexol",
        "iopamidol",
        "iodixanol",
        "ioversol",
        "iopromide",
        "omnipaque",
        "visipaque",
        "isovue",
    ),
    "gadolinium": (
        "gadolin",
        "gadobutrol",
        "gadoterate",
        "gadoteridol",
        "gadopentetate",
        "gadobenate",
        "gadoxetate",
        "gadavist",
        "dotarem",
        "magnevist",
        "multihance",
        "prohance",
        "eovist",
    ),
}
ORDER_OVERRIDES = override_reasons(
    ("benefit-outweighs-risk", "Benefit outweighs the risk"),
    ("premedication-planned", "Premedication or protocol change planned"),
    ("data-outdated", "The record is outdated or wrong"),
    ("already-assessed", "Already assessed with the patient"),
)


@dataclass(frozen=True)
class CheckContext:
    patient_id: str
    now: datetime


def evidence_ref(resource: dict[str, Any]) -> str:
    ref = f"{resource.get('resourceType')}/{resource.get('id')}"
    version = (resource.get("meta") or {}).get("versionId")
    return f"{ref}/_history/{version}" if version else ref


def parse_when(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) < 4:
        return None
    text = value.replace("Z", "+00:00")
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def observed_at(observation: dict[str, Any]) -> datetime | None:
    period = observation.get("effectivePeriod") or {}
    return (
        parse_when(observation.get("effectiveDateTime"))
        or parse_when(observation.get("effectiveInstant"))
        or parse_when(period.get("start") if isinstance(period, dict) else None)
        or parse_when(observation.get("issued"))
    )


def latest(
    observations: Iterable[dict[str, Any]], loinc: frozenset[str]
) -> tuple[dict[str, Any], datetime] | None:
    """Most recent final result with one of the ``loinc`` codes and a date."""
    best: tuple[dict[str, Any], datetime] | None = None
    for obs in observations:
        if obs.get("resourceType") != "Observation" or obs.get("status") not in RESULT_STATUSES:
            continue
        if not any(
            c.split("|", 1)[1] in loinc for c in codes_of(obs.get("code")) if c.startswith(LOINC + "|")
        ):
            continue
        when = observed_at(obs)
        if when is not None and (best is None or when > best[1]):
            best = (obs, when)
    return best


def _quantity(obs: dict[str, Any]) -> tuple[float, str] | None:
    q = obs.get("valueQuantity")
    if isinstance(q, dict) and isinstance(q.get("value"), int | float):
        return float(q["value"]), str(q.get("unit") or q.get("code") or "")
    return None


def _cancel(order: ImagingOrder, why: str) -> Suggestion:
    return Suggestion(
        label=f"Cancel {order.label}",
        actions=(
            Action(type="delete", description=f"Cancel the draft order: {why}", resourceId=order.reference),
        ),
    )


def _card(
    order: ImagingOrder,
    *,
    summary: str,
    detail: str,
    indicator: Indicator,
    topic: tuple[str, str],
    evidence: list[dict[str, Any]],
    suggestions: tuple[Suggestion, ...],
) -> Card:
    refs = [evidence_ref(r) for r in evidence]
    lines = [
        detail,
        "",
        f"Order: {order.label} ({order.reference}).",
        "Evidence: " + ", ".join(refs) if refs else "Evidence: none recorded.",
    ]
    return Card(
        summary=shorten_summary(summary),
        detail="\n".join(lines),
        indicator=indicator,
        source=source("Veritrace imaging safety checks", *topic),
        suggestions=suggestions,
        selectionBehavior="at-most-one" if suggestions else None,
        overrideReasons=ORDER_OVERRIDES,
        extension={"veritrace.evidence": refs, "veritrace.order": order.reference},
    )


def _allergy_agent(allergy: dict[str, Any]) -> str | None:
    """``iodinated`` / ``gadolinium`` / ``contrast`` (unspecified) for a contrast allergy, else None."""
    texts = texts_of(allergy.get("code"))
    for reaction in allergy.get("reaction", []) if isinstance(allergy.get("reaction"), list) else []:
        if isinstance(reaction, dict):
            texts += texts_of(reaction.get("substance"))
    text = " ".join(texts)
    for agent, words in AGENT_WORDS.items():
        if any(word in text for word in words):
            return agent
    return "contrast" if "contrast" in text else None


def _active(allergy: dict[str, Any]) -> bool:
    clinical = {c.split("|", 1)[1] for c in codes_of(allergy.get("clinicalStatus"))}
    verification = {c.split("|", 1)[1] for c in codes_of(allergy.get("verificationStatus"))}
    return not (clinical & {"inactive", "resolved"}) and not (verification & {"refuted", "entered-in-error"})


def contrast_allergy_card(
    order: ImagingOrder, allergies: list[dict[str, Any]], _ctx: CheckContext
) -> Card | None:
    if order.contrast is None:
        return None
    matching = [
        a
        for a in allergies
        if a.get("resourceType") == "AllergyIntolerance"
        and _active(a)
        and _allergy_agent(a) in (order.contrast, "contrast")
    ]
    if not matching:
        return None
    severe = any(
        a.get("criticality") == "high"
        or any(isinstance(r, dict) and r.get("severity") == "severe" for r in a.get("reaction", []))
        for a in matching
    )
    names = "; ".join(sorted({(texts_of(a.get("code")) or ["contrast allergy"])[0] for a in matching}))
    return _card(
        order,
        summary=f"{order.contrast.capitalize()} contrast ordered; patient has a recorded allergy: {names}",
        detail=(
            f"This order uses **{order.contrast} contrast** and the record lists an active allergy: {names}"
            f"{' (high criticality or severe reaction)' if severe else ''}. Consider a non-contrast "
            "protocol, another modality, or premedication per local policy."
        ),
        indicator=Indicator.CRITICAL if severe else Indicator.WARNING,
        topic=("contrast-allergy", "Contrast allergy"),
        evidence=matching,
        suggestions=(_cancel(order, f"recorded {order.contrast} contrast allergy"),),
    )


def renal_function_card(order: ImagingOrder, labs: list[dict[str, Any]], ctx: CheckContext) -> Card | None:
    if order.contrast is None:
        return None
    egfr, creatinine = latest(labs, EGFR_CODES), latest(labs, CREATININE_CODES)
    current = ctx.now - timedelta(days=RENAL_CURRENT_DAYS)
    topic = ("renal-function", "Renal function before contrast")
    if egfr is not None and egfr[1] >= current and (q := _quantity(egfr[0])) is not None:
        value, unit = q
        when = egfr[1].date().isoformat()
        risk = "contrast-associated AKI" if order.contrast == "iodinated" else "nephrogenic systemic fibrosis"
        if value < 30:
            return _card(
                order,
                summary=f"eGFR {value:g} {unit} on {when}: {order.contrast} contrast needs a risk decision",
                detail=f"Most recent eGFR is **{value:g} {unit}** ({when}), below 30: risk of {risk}.",
                indicator=Indicator.CRITICAL if value < 15 else Indicator.WARNING,
                topic=topic,
                evidence=[egfr[0]],
                suggestions=(_cancel(order, f"eGFR {value:g} on {when}"),),
            )
        if value < 45 and order.contrast == "iodinated":
            return _card(
                order,
                summary=f"eGFR {value:g} {unit} on {when}: consider hydration before iodinated contrast",
                detail=f"Most recent eGFR is **{value:g} {unit}** ({when}), between 30 and 45.",
                indicator=Indicator.INFO,
                topic=topic,
                evidence=[egfr[0]],
                suggestions=(),
            )
        return None
    if creatinine is not None and creatinine[1] >= current and (q := _quantity(creatinine[0])) is not None:
        value, unit = q
        mg_dl = value / UMOL_PER_MG_DL if "mol" in unit.lower() else value
        when = creatinine[1].date().isoformat()
        if mg_dl > 1.5:
            return _card(
                order,
                summary=f"Creatinine {value:g} {unit} on {when} (no eGFR): check renal risk before contrast",
                detail=f"Most recent serum creatinine is **{value:g} {unit}** ({when}); no eGFR on record.",
                indicator=Indicator.WARNING,
                topic=topic,
                evidence=[creatinine[0]],
                suggestions=(_cancel(order, f"creatinine {value:g} {unit} on {when}"),),
            )
        return None
    older = [r for r in (egfr, creatinine) if r is not None]
    last = f" The last result is from {max(r[1] for r in older).date().isoformat()}." if older else ""
    return _card(
        order,
        summary=f"No eGFR or creatinine in {RENAL_CURRENT_DAYS} days before {order.contrast} contrast",
        detail=f"No current renal function result.{last}",
        indicator=Indicator.INFO,
        topic=topic,
        evidence=[r[0] for r in older],
        suggestions=(
            Suggestion(
                label="Order serum creatinine",
                actions=(
                    Action(
                        type="create",
                        description="Order a serum creatinine (LOINC 2160-0) before the contrast study",
                        resource={
                            "resourceType": "ServiceRequest",
                            "status": "draft",
                            "intent": "order",
                            "code": {
                                "coding": [
                                    {
                                        "system": LOINC,
                                        "code": "2160-0",
                                        "display": "Creatinine [Mass/volume] in Serum or Plasma",
                                    }
                                ]
                            },
                            "subject": {"reference": f"Patient/{ctx.patient_id}"},
                        },
                    ),
                ),
            ),
        ),
    )


def pregnancy_card(
    order: ImagingOrder, observations: list[dict[str, Any]], patient: dict[str, Any] | None, ctx: CheckContext
) -> Card | None:
    if order.modality not in IONISING and order.contrast != "gadolinium":
        return None
    if patient is not None and patient.get("gender") == "male":
        return None
    found = latest(observations, PREGNANCY_CODES)
    if found is None or found[1] < ctx.now - timedelta(days=PREGNANCY_CURRENT_DAYS):
        return None
    obs, when = found
    value = obs.get("valueCodeableConcept")
    coded = {c.split("|", 1)[1] for c in codes_of(value)}
    words = " ".join(texts_of(value))
    pregnant_text = bool(re.search(r"\bpregnant\b", words)) and "not pregnant" not in words
    if SNOMED_PREGNANT not in coded and not pregnant_text:
        return None
    exposure = "ionising radiation" if order.modality in IONISING else "gadolinium contrast"
    return _card(
        order,
        summary=f"Patient recorded as pregnant ({when.date().isoformat()}); this order involves {exposure}",
        detail=(
            f"Pregnancy status recorded **pregnant** on {when.date().isoformat()}. The order involves "
            f"{exposure}; consider ultrasound or non-contrast MRI."
        ),
        indicator=Indicator.WARNING,
        topic=("pregnancy", "Pregnancy and imaging"),
        evidence=[obs],
        suggestions=(_cancel(order, "patient recorded as pregnant"),),
    )


def _study_modalities(study: dict[str, Any]) -> set[str]:
    """ImagingStudy.modality and series.modality are Codings (not CodeableConcepts) in R4."""
    codings = list(study.get("modality", []) or [])
    codings += [series.get("modality") for series in study.get("series", []) if isinstance(series, dict)]
    found = {str(c["code"]) for c in codings if isinstance(c, dict) and c.get("code")}
    return {"XR" if m in ("CR", "DX") else m for m in found}


def _study_regions(study: dict[str, Any]) -> frozenset[str]:
    texts = [str(study.get("description", "")).lower(), *texts_of(study.get("procedureCode", []))]
    for series in study.get("series", []):
        if isinstance(series, dict):
            texts += [*texts_of(series.get("bodySite")), str(series.get("description", "")).lower()]
    return regions_of(texts)


def duplicate_imaging_card(
    order: ImagingOrder, studies: list[dict[str, Any]], ctx: CheckContext
) -> Card | None:
    since = ctx.now - timedelta(days=DUPLICATE_WINDOW_DAYS)
    recent = []
    for study in studies:
        if study.get("resourceType") != "ImagingStudy" or study.get("status") in (
            "cancelled",
            "entered-in-error",
        ):
            continue
        started = parse_when(study.get("started"))
        if started is None or started < since or order.modality not in _study_modalities(study):
            continue
        same_procedure = bool(order.codes & codes_of(study.get("procedureCode", [])))
        if same_procedure or (order.regions & _study_regions(study)):
            recent.append((started, study))
    if not recent:
        return None
    started, study = max(recent, key=lambda pair: pair[0])
    days = max(0, (ctx.now - started).days)
    region = ", ".join(sorted(order.regions & _study_regions(study))) or "same procedure"
    return _card(
        order,
        summary=f"Possible duplicate: {order.modality} {region} already done {days} day(s) ago",
        detail=(
            f"An {order.modality} study of the same body region ({region}) was performed on "
            f"{started.date().isoformat()}."
        ),
        indicator=Indicator.WARNING,
        topic=("duplicate-imaging", "Recent duplicate imaging"),
        evidence=[s for _, s in sorted(recent, key=lambda pair: pair[0], reverse=True)],
        suggestions=(_cancel(order, f"same study done on {started.date().isoformat()}"),),
    )

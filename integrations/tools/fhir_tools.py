"""FHIR tools for the agent: demographics, conditions, labs with trend, vitals, medications, allergies,
procedures and prior imaging, each reading only the registry's patient.

Every search is scoped with ``patient=<id>`` and every resource that comes back is checked to point at
that patient (a server ignoring a parameter must not leak another record into the trace). Each result
lists, per resource, its citation id and one-line display for the model, and carries the evidence items
and facts the verifier needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from pydantic import Field, model_validator

from integrations.fhir import codes
from integrations.fhir.client import FhirClient
from integrations.fhir.errors import FhirRequestError
from integrations.fhir.patient_record import AI_ASSERTED
from integrations.tools.evidence import evidence_of
from model.tools import PatientScope, PatientScopedArguments, Tool, ToolFailure, ToolResult

MAX_RESULTS = 50
LOINC_PATTERN = r"^[0-9]{1,7}-[0-9]$"


class PatientOnly(PatientScopedArguments):
    """Arguments of tools that need nothing but the patient."""


class DateRange(PatientScopedArguments):
    """An optional inclusive date range and a result limit (newest first)."""

    since: date | None = Field(default=None, description="earliest date, inclusive (YYYY-MM-DD)")
    until: date | None = Field(default=None, description="latest date, inclusive (YYYY-MM-DD)")
    limit: int = Field(
        default=20, ge=1, le=MAX_RESULTS, description="at most this many results, newest first"
    )

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.since and self.until and self.since > self.until:
            raise ValueError("since must not be after until")
        return self


class LabArguments(DateRange):
    """Results of one lab test, by LOINC code."""

    loinc: str = Field(pattern=LOINC_PATTERN, description="LOINC code of the test, e.g. 2160-0")


class MedicationArguments(PatientScopedArguments):
    status: Literal["active", "all"] = Field(default="active", description="active orders only, or all")


def _belongs(resource: dict[str, Any], patient_id: str) -> bool:
    ref = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
    parts = str(ref).split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-2:] == ["Patient", patient_id]


def _result(resources: Sequence[dict[str, Any]], patient_id: str, **extra: Any) -> ToolResult:
    """The model's view (id and display per resource) plus evidence and facts; refuses foreign resources."""
    items, facts, listed = [], {}, []
    for resource in resources:
        if resource.get("resourceType") != "Patient" and not _belongs(resource, patient_id):
            raise ToolFailure(
                f"the server returned {resource.get('resourceType')}/{resource.get('id')}, "
                "which is not the patient's; result withheld"
            )
        item, item_facts = evidence_of(resource)
        items.append(item)
        facts[item.id] = item_facts
        listed.append({"id": item.id, "text": item.display})
    return ToolResult(content={"count": len(listed), "items": listed, **extra}, evidence=items, facts=facts)


def _date_params(args: DateRange, name: str = "date") -> list[tuple[str, str]]:
    params = []
    if args.since:
        params.append((name, f"ge{args.since.isoformat()}"))
    if args.until:
        params.append((name, f"le{args.until.isoformat()}"))
    return params


def _trend(observations: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """First and last value (by date), their change and its direction; None under two values."""
    points = [
        (
            o.get("effectiveDateTime", ""),
            Decimal(str(o["valueQuantity"]["value"])),
            o["valueQuantity"].get("unit"),
        )
        for o in observations
        if isinstance(o.get("valueQuantity"), dict) and o["valueQuantity"].get("value") is not None
    ]
    points.sort(key=lambda p: p[0])
    if len(points) < 2 or len({p[2] for p in points}) != 1:
        return None  # units differ: a change across units would be meaningless
    (first_at, first, unit), (last_at, last, _) = points[0], points[-1]
    change = last - first
    direction = "stable" if change == 0 else "rising" if change > 0 else "falling"
    return {
        "first": {"value": str(first), "unit": unit, "date": first_at[:10]},
        "last": {"value": str(last), "unit": unit, "date": last_at[:10]},
        "change": str(change),
        "direction": direction,
        "count": len(points),
    }


class FhirTools:
    """The FHIR tool implementations over one client; ``tools()`` gives them to a registry."""

    def __init__(self, client: FhirClient) -> None:
        self.client = client

    def _search(
        self, resource_type: str, scope: PatientScope, params: list[tuple[str, str]], limit: int
    ) -> list[dict[str, Any]]:
        return self.client.search(resource_type, [("patient", scope.patient_id), *params], limit=limit)

    def demographics(self, scope: PatientScope, args: PatientOnly) -> ToolResult:
        try:
            patient = self.client.read("Patient", scope.patient_id)
        except FhirRequestError as exc:
            raise ToolFailure(f"Patient/{scope.patient_id} cannot be read (HTTP {exc.status})") from exc
        return _result([patient], scope.patient_id)

    def active_conditions(self, scope: PatientScope, args: PatientOnly) -> ToolResult:
        found = self._search(
            "Condition", scope, [("clinical-status", "active"), ("_count", str(MAX_RESULTS))], MAX_RESULTS
        )
        return _result(found, scope.patient_id)

    def labs(self, scope: PatientScope, args: LabArguments) -> ToolResult:
        params = [("code", f"{codes.LOINC}|{args.loinc}"), *_date_params(args), ("_sort", "-date")]
        found = self._search("Observation", scope, [*params, ("_count", str(args.limit))], args.limit)
        return _result(found, scope.patient_id, loinc=args.loinc, trend=_trend(found))

    def vital_signs(self, scope: PatientScope, args: DateRange) -> ToolResult:
        params = [
            ("category", f"{codes.OBSERVATION_CATEGORY}|vital-signs"),
            *_date_params(args),
            ("_sort", "-date"),
        ]
        found = self._search("Observation", scope, [*params, ("_count", str(args.limit))], args.limit)
        return _result(found, scope.patient_id)

    def medications(self, scope: PatientScope, args: MedicationArguments) -> ToolResult:
        params = [("status", "active")] if args.status == "active" else []
        found = self._search(
            "MedicationRequest",
            scope,
            [*params, ("_sort", "-authoredon"), ("_count", str(MAX_RESULTS))],
            MAX_RESULTS,
        )
        return _result(found, scope.patient_id)

    def allergies(self, scope: PatientScope, args: PatientOnly) -> ToolResult:
        found = self._search("AllergyIntolerance", scope, [("_count", str(MAX_RESULTS))], MAX_RESULTS)
        return _result(found, scope.patient_id)

    def procedures(self, scope: PatientScope, args: DateRange) -> ToolResult:
        params = [*_date_params(args), ("_sort", "-date"), ("_count", str(args.limit))]
        return _result(self._search("Procedure", scope, params, args.limit), scope.patient_id)

    def prior_imaging(self, scope: PatientScope, args: DateRange) -> ToolResult:
        """Radiology reports (never Veritrace's own AI-asserted drafts) and the imaging studies."""
        reports = self._search(
            "DiagnosticReport",
            scope,
            [
                ("_security:not", AI_ASSERTED),
                *_date_params(args),
                ("_sort", "-date"),
                ("_count", str(args.limit)),
            ],
            args.limit,
        )
        studies = self._search(
            "ImagingStudy",
            scope,
            [*_date_params(args, "started"), ("_sort", "-started"), ("_count", str(args.limit))],
            args.limit,
        )
        return _result([*reports, *studies], scope.patient_id)

    def tools(self) -> list[Tool[Any]]:
        return [
            Tool(
                "patient_demographics",
                "Administrative gender and birth date of the patient.",
                PatientOnly,
                self.demographics,
            ),
            Tool(
                "active_conditions",
                "The patient's active problems (conditions) with codes and onset.",
                PatientOnly,
                self.active_conditions,
            ),
            Tool(
                "lab_results",
                "Results of one lab test by LOINC code, newest first, optionally within a date range, "
                "with the trend from the first to the last result.",
                LabArguments,
                self.labs,
            ),
            Tool(
                "vital_signs",
                "Vital signs (blood pressure, heart rate, weight, ...), newest first.",
                DateRange,
                self.vital_signs,
            ),
            Tool(
                "medications",
                "Medication orders, active only by default.",
                MedicationArguments,
                self.medications,
            ),
            Tool(
                "allergies", "Allergies and intolerances with their reactions.", PatientOnly, self.allergies
            ),
            Tool("procedures", "Procedures performed, newest first.", DateRange, self.procedures),
            Tool(
                "prior_imaging",
                "Prior radiology reports (conclusions) and imaging studies, newest first.",
                DateRange,
                self.prior_imaging,
            ),
        ]


def fhir_tools(client: FhirClient) -> list[Tool[Any]]:
    """The FHIR tools over ``client``, ready for ``ToolRegistry(patient_id, fhir_tools(client))``."""
    return FhirTools(client).tools()

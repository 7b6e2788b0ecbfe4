"""Open a cited FHIR resource with the clinician's own SMART token, as the EHR would show it.

The read goes to the launching EHR's FHIR server (``iss``) with the session's access token, so the
EHR's access rules apply to what the clinician sees. The exact version the model cited is read
(``vread``) and the current version too, so the page can say when the record changed after drafting.
A resource outside the launch patient's compartment is refused even if the server returned it.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel

from cds.viewer.errors import ViewerRefusal
from cds.viewer.launch_state import ViewerSession
from integrations.fhir.client import check_id, check_resource_type
from integrations.fhir.evidence_display import display_of

FHIR_JSON = "application/fhir+json"


class EvidenceResource(BaseModel):
    """A cited resource as the page shows it (no names or identifiers of the patient)."""

    reference: str
    cited_version: str | None
    current_version: str | None
    changed_since_cited: bool
    display: str
    date: str | None
    status: str | None
    value: str | None
    cited_display: str


def _date_of(resource: dict[str, Any]) -> str | None:
    for key in (
        "effectiveDateTime",
        "authoredOn",
        "issued",
        "recordedDate",
        "onsetDateTime",
        "performedDateTime",
    ):
        if isinstance(resource.get(key), str):
            return str(resource[key])
    period = resource.get("effectivePeriod") or resource.get("performedPeriod")
    return period.get("start") if isinstance(period, dict) else None


def _value_of(resource: dict[str, Any]) -> str | None:
    quantity = resource.get("valueQuantity")
    if isinstance(quantity, dict) and "value" in quantity:
        return f"{quantity['value']} {quantity.get('unit') or quantity.get('code') or ''}".strip()
    if isinstance(resource.get("conclusion"), str):
        return str(resource["conclusion"])
    concept = resource.get("medicationCodeableConcept") or resource.get("valueCodeableConcept")
    if isinstance(concept, dict):
        return concept.get("text") or next(
            (c.get("display") for c in concept.get("coding", []) if c.get("display")), None
        )
    return None


def _compartment(resource: dict[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        return f"Patient/{resource.get('id')}"
    for key in ("subject", "patient"):
        ref = (resource.get(key) or {}).get("reference")
        if isinstance(ref, str):
            parts = ref.rstrip("/").split("/")
            return "/".join(parts[-2:])
    return None


async def _get(http: httpx.AsyncClient, session: ViewerSession, path: str) -> dict[str, Any]:
    try:
        response = await http.get(
            f"{session.iss}/{path}",
            headers={"Authorization": f"Bearer {session.access_token}", "Accept": FHIR_JSON},
        )
    except httpx.HTTPError as exc:
        raise ViewerRefusal(502, "The EHR's FHIR server could not be reached", type(exc).__name__) from exc
    if response.status_code in (401, 403):
        raise ViewerRefusal(403, "The EHR did not allow this read", f"HTTP {response.status_code}.")
    if response.status_code != 200:
        raise ViewerRefusal(502, "The cited resource could not be read", f"HTTP {response.status_code}.")
    body = response.json()
    if not isinstance(body, dict):
        raise ViewerRefusal(502, "The cited resource could not be read", "not a FHIR resource.")
    return body


async def read_cited_resource(
    http: httpx.AsyncClient, session: ViewerSession, evidence: dict[str, Any]
) -> EvidenceResource:
    """Read the trace's evidence item ``evidence`` from the EHR; raises ``ViewerRefusal`` when refused."""
    try:
        resource_type = check_resource_type(str(evidence.get("resource_type")))
        resource_id = check_id(str(evidence.get("resource_id")))
        version = evidence.get("version_id")
        if version is not None:
            version = check_id(str(version), "version_id")
    except ValueError as exc:
        raise ViewerRefusal(400, "The citation is malformed", "bad resource reference in the trace.") from exc
    current = await _get(http, session, f"{resource_type}/{resource_id}")
    cited = (
        await _get(http, session, f"{resource_type}/{resource_id}/_history/{version}") if version else current
    )
    for resource in (current, cited):
        if (
            resource.get("resourceType") != resource_type
            or _compartment(resource) != f"Patient/{session.patient_id}"
        ):
            raise ViewerRefusal(403, "The cited resource belongs to another patient", "nothing is shown.")
    current_version = (current.get("meta") or {}).get("versionId")
    return EvidenceResource(
        reference=f"{resource_type}/{resource_id}",
        cited_version=version,
        current_version=current_version,
        changed_since_cited=version is not None
        and current_version is not None
        and version != current_version,
        display=display_of(cited),
        date=_date_of(cited),
        status=cited.get("status") if isinstance(cited.get("status"), str) else None,
        value=_value_of(cited),
        cited_display=str(evidence.get("display", "")),
    )

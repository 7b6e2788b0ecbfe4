"""Read the part of a patient's FHIR record the model gets as context, pinned to exact versions.

Every query is scoped with ``patient=<id>`` and every resource that comes back is checked to point at
that patient, so a server that ignores a parameter cannot leak another patient's data into a prompt.
Each resource keeps its ``versionId``, ``lastUpdated`` and the SHA-256 of its canonical JSON, so a
citation in a draft names exactly what was read; the list of reads goes to the audit log.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field

from integrations.fhir import codes
from integrations.fhir.canonical import resource_sha256
from integrations.fhir.client import FhirClient, check_id
from integrations.fhir.errors import FhirResponseError
from integrations.fhir.evidence_display import display_of
from model.report import EvidenceItem

AI_ASSERTED = f"{codes.V3_OBSERVATION_VALUE}|AIAST"


class RecordedResource(BaseModel):
    """One resource version as read from the server."""

    model_config = ConfigDict(frozen=True)

    resource_type: str
    resource_id: str
    version_id: str | None
    last_updated: datetime | None
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    resource: dict[str, Any]

    @classmethod
    def of(cls, resource: dict[str, Any]) -> RecordedResource:
        meta = resource.get("meta") or {}
        return cls(
            resource_type=resource["resourceType"],
            resource_id=resource["id"],
            version_id=meta.get("versionId"),
            last_updated=meta.get("lastUpdated"),
            sha256=resource_sha256(resource),
            resource=resource,
        )

    @property
    def reference(self) -> str:
        """``Type/id/_history/vid`` (``Type/id`` when the server sent no version): the citation id."""
        base = f"{self.resource_type}/{self.resource_id}"
        return f"{base}/_history/{self.version_id}" if self.version_id else base


class FhirRead(BaseModel):
    """One interaction with the FHIR server, for the audit log: what was asked and which versions came back.

    ``query`` is the URL-encoded search (empty for a read by id); values are FHIR ids and codes, never
    free text about the patient.
    """

    model_config = ConfigDict(frozen=True)

    interaction: Literal["read", "search"]
    resource_type: str
    query: str
    count: int
    versions: list[str]


class PatientRecord(BaseModel):
    """The context read for one patient, grouped by kind, each list in the order the server sorted it."""

    patient_id: str
    patient: RecordedResource
    conditions: list[RecordedResource]
    observations: list[RecordedResource]
    medication_requests: list[RecordedResource]
    allergies: list[RecordedResource]
    diagnostic_reports: list[RecordedResource]
    reads: list[FhirRead]

    def resources(self) -> Iterator[RecordedResource]:
        """Patient first, then allergies, conditions, medications, observations, reports."""
        yield self.patient
        yield from self.allergies
        yield from self.conditions
        yield from self.medication_requests
        yield from self.observations
        yield from self.diagnostic_reports

    def to_evidence(self) -> list[EvidenceItem]:
        """Evidence items the model may cite; ``id`` is the versioned reference ``Type/id/_history/v``."""
        return [
            EvidenceItem(
                id=r.reference,
                resource_type=r.resource_type,
                resource_id=r.resource_id,
                version_id=r.version_id,
                last_updated=r.last_updated,
                sha256=r.sha256,
                display=display_of(r.resource),
            )
            for r in self.resources()
        ]


def read_patient_record(
    client: FhirClient, patient_id: str, *, max_observations: int = 100, max_reports: int = 20
) -> PatientRecord:
    """Read Patient, active Conditions, the most recent Observations (``_sort=-date``), MedicationRequests,
    AllergyIntolerances and prior DiagnosticReports of ``patient_id``.

    Prior reports exclude those carrying the ``AIAST`` (AI asserted) security label, so Veritrace's own
    drafts never become the evidence for its next draft. Raises ``FhirRequestError`` when the patient
    does not exist, ``FhirUnavailable`` when the server is down, ``FhirResponseError`` when the server
    returns a resource of another patient.
    """
    check_id(patient_id, "patient_id")
    if max_observations < 1 or max_reports < 1:
        raise ValueError("max_observations and max_reports must be at least 1")
    reads: list[FhirRead] = []
    patient = RecordedResource.of(client.read("Patient", patient_id))
    reads.append(
        FhirRead(interaction="read", resource_type="Patient", query="", count=1, versions=[patient.reference])
    )

    def search(resource_type: str, params: list[tuple[str, str]], limit: int) -> list[RecordedResource]:
        scoped = [("patient", patient_id), *params]
        found = [RecordedResource.of(r) for r in client.search(resource_type, scoped, limit=limit)]
        for r in found:
            _check_belongs(r.resource, patient_id)
        reads.append(
            FhirRead(
                interaction="search",
                resource_type=resource_type,
                query=urlencode(scoped),
                count=len(found),
                versions=[r.reference for r in found],
            )
        )
        return found

    conditions = search("Condition", [("clinical-status", "active"), ("_count", "100")], 500)
    observations = search(
        "Observation", [("_sort", "-date"), ("_count", str(min(max_observations, 100)))], max_observations
    )
    medications = search("MedicationRequest", [("_sort", "-authoredon"), ("_count", "100")], 500)
    allergies = search("AllergyIntolerance", [("_count", "100")], 500)
    reports = search(
        "DiagnosticReport",
        [("_security:not", AI_ASSERTED), ("_sort", "-date"), ("_count", str(min(max_reports, 100)))],
        max_reports,
    )
    return PatientRecord(
        patient_id=patient_id,
        patient=patient,
        conditions=conditions,
        observations=observations,
        medication_requests=medications,
        allergies=allergies,
        diagnostic_reports=reports,
        reads=reads,
    )


def _check_belongs(resource: dict[str, Any], patient_id: str) -> None:
    """The resource's subject / patient must be ``Patient/<patient_id>`` (relative, absolute or versioned)."""
    ref = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
    parts = ref.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if parts[-2:] != ["Patient", patient_id]:
        raise FhirResponseError(
            f"search for Patient/{patient_id} returned {resource.get('resourceType')}/{resource.get('id')} "
            "of another patient"
        )

"""Turn a FHIR resource as read from the server into what a tool result carries: evidence and its facts.

The evidence item pins the exact version read (versioned reference as its id, SHA-256 of the canonical
JSON), with the same id scheme and display as the context assembly (``PatientRecord.to_evidence``), so a
citation means the same thing whichever path read the resource.
"""

from __future__ import annotations

from typing import Any

from integrations.fhir.evidence_display import display_of
from integrations.fhir.patient_record import RecordedResource
from model.report import EvidenceItem
from model.verification import EvidenceFacts, facts_from_resource


def evidence_of(resource: dict[str, Any]) -> tuple[EvidenceItem, EvidenceFacts]:
    """The evidence item (id ``Type/id/_history/v``) and the structured facts of one resource."""
    recorded = RecordedResource.of(resource)
    item = EvidenceItem(
        id=recorded.reference,
        resource_type=recorded.resource_type,
        resource_id=recorded.resource_id,
        version_id=recorded.version_id,
        last_updated=recorded.last_updated,
        sha256=recorded.sha256,
        display=display_of(resource),
    )
    return item, facts_from_resource(resource)

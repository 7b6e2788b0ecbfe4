"""The patient context the integrations layer assembles from FHIR reads and hands to the model."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from model.report import EvidenceItem


class PatientContext(BaseModel):
    """Evidence the model may read and cite for one patient; ids must be unique to be citable."""

    patient_id: str = Field(min_length=1)
    evidence: list[EvidenceItem] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> PatientContext:
        seen: set[str] = set()
        for item in self.evidence:
            if item.id in seen:
                raise ValueError(f"evidence id {item.id!r} appears more than once")
            seen.add(item.id)
        return self

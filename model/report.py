"""Report types the model emits and the rest of Veritrace stores, verifies and writes back.

They live in `model` because the model's JSON schema is generated from them; importing this module must
stay cheap (no torch) since the API process uses these types too.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Severity(StrEnum):
    """How urgently a statement needs a clinician's attention."""

    NORMAL = "normal"
    MINOR = "minor"
    MODERATE = "moderate"
    CRITICAL = "critical"


class Laterality(StrEnum):
    """Body side a statement refers to; `none` when side does not apply."""

    LEFT = "left"
    RIGHT = "right"
    BILATERAL = "bilateral"
    NONE = "none"


class EvidenceItem(BaseModel):
    """One FHIR resource version the model was shown; `id` is what statements cite.

    The version and digest pin exactly what was read, so an auditor can tell whether the record changed
    after the report was drafted. `display` is the short text that goes into the prompt.
    """

    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=1, max_length=128)
    resource_type: str = Field(min_length=1)
    resource_id: str = Field(min_length=1)
    version_id: str | None = None
    last_updated: datetime | None = None
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    display: str = Field(max_length=400)


class ImageRef(BaseModel):
    """Which DICOM frame a model image came from; its `citation_id` is citable like an evidence id."""

    model_config = ConfigDict(frozen=True)

    study_uid: str
    series_uid: str
    sop_uid: str
    frame: int = Field(default=0, ge=0)

    @property
    def citation_id(self) -> str:
        """Stable id statements use to cite this frame (`img:<sop uid>:<frame>`)."""
        return f"img:{self.sop_uid}:{self.frame}"


class Statement(BaseModel):
    """One sentence of a draft report with the evidence it rests on."""

    text: str
    severity: Severity = Severity.NORMAL
    laterality: Laterality = Laterality.NONE
    codes: list[str] = Field(default_factory=list)
    citations: list[str] = Field(default_factory=list)


class DraftReport(BaseModel):
    """What the model drafted for one study; `untrained_model` labels output of random test weights."""

    findings: list[Statement] = Field(default_factory=list)
    impression: list[Statement] = Field(default_factory=list)
    untrained_model: bool

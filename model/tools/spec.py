"""What a tool is: a name, a pydantic argument model (its JSON schema), and a patient-scoped function.

Every argument model names the patient (``patient_id``) so that a model asking about another patient is
visible and refused by the registry; the implementation never reads that field, it receives the
registry's own ``PatientScope``, so even a registry bug could not point a tool at another record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from model.report import EvidenceItem, ImageRef
from model.verification import EvidenceFacts

FHIR_ID_PATTERN = r"^[A-Za-z0-9\-.]{1,64}$"


class PatientScopedArguments(BaseModel):
    """Base of every tool's arguments: unknown fields are errors, the patient is named explicitly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    patient_id: str = Field(pattern=FHIR_ID_PATTERN, description="FHIR id of the patient under review")


@dataclass(frozen=True)
class PatientScope:
    """The one patient a registry's tools may read; set by the caller, never by the model."""

    patient_id: str


class ToolImage(BaseModel):
    """An image a tool hands the model to look at in its next step (a windowed crop, say).

    ``ref`` is the DICOM frame it was cut from, so a statement about what the model saw cites that frame;
    ``description`` says what the image is (window, region) without patient data.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    image: Image.Image
    ref: ImageRef
    description: str = Field(max_length=200)


class ToolResult(BaseModel):
    """What a tool returns: JSON for the model, and the evidence (with facts) or images it read.

    ``images`` are shown to the model in the next step; they are pixel data, so they are left out of
    any dump of the result (traces hold their ``ref``s, which are also in ``image_refs``).
    """

    content: dict[str, Any]
    evidence: list[EvidenceItem] = Field(default_factory=list)
    facts: dict[str, EvidenceFacts] = Field(default_factory=dict)
    image_refs: list[ImageRef] = Field(default_factory=list)
    images: list[ToolImage] = Field(default_factory=list, exclude=True)


class ToolFailure(Exception):
    """An expected failure the model should see as the tool's answer (bad range, nothing found, ...).

    Its message goes to the model and the trace: it must not carry patient data beyond ids.
    """


A = TypeVar("A", bound=PatientScopedArguments)


@dataclass(frozen=True)
class Tool(Generic[A]):
    """One tool. ``run`` gets the registry's scope and the validated arguments."""

    name: str
    description: str
    arguments: type[A]
    run: Callable[[PatientScope, A], ToolResult]

    def __post_init__(self) -> None:
        if not self.name.replace("_", "").isalnum() or not self.name.islower():
            raise ValueError(f"tool name must be lower_snake_case, got {self.name!r}")
        if not issubclass(self.arguments, PatientScopedArguments):
            raise TypeError(f"{self.name}: arguments must subclass PatientScopedArguments")

    def json_schema(self) -> dict[str, Any]:
        """The function declaration a model sees: name, description and the arguments' JSON schema."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": self.arguments.model_json_schema(),
        }

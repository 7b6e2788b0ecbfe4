"""The model card page: the source attributes ONC HTI-1 asks of predictive decision support interventions.

45 CFR 170.315(b)(11)(iv) groups them as below. Values come from a JSON file the developer or the hospital
maintains (``ReviewConfig.model_card_file``: ``{"attributes": {"intended_use": "...", ...}}``); an
attribute that is missing is shown as *not provided*, never silently left out, so gaps are visible. The
page adds what Veritrace itself knows: the exact model versions that ran and their local override and
verification-failure rates (the "validity in local data" that ongoing maintenance asks for).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

HTI1_SECTIONS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Details and output of the intervention",
        (
            ("developer", "Developer name and contact information"),
            ("funding_source", "Funding source of the intervention's development"),
            ("output_description", "Description of the value the intervention produces as output"),
            ("output_type", "Output type (prediction, classification, recommendation, evaluation, analysis)"),
        ),
    ),
    (
        "Purpose of the intervention",
        (
            ("intended_use", "Intended use"),
            ("intended_population", "Intended patient population(s)"),
            ("intended_users", "Intended user(s)"),
            ("decision_role", "Intended decision-making role (informs, augments, replaces)"),
        ),
    ),
    (
        "Cautioned out-of-scope use",
        (
            ("out_of_scope_uses", "Tasks, situations or populations where use is cautioned against"),
            ("known_risks", "Known risks, inappropriate settings or uses, known limitations"),
        ),
    ),
    (
        "Development details and input features",
        (
            ("training_data_criteria", "Inclusion and exclusion criteria of the training data"),
            ("demographic_inputs", "Use of demographic and social determinants variables as input features"),
            ("training_representativeness", "Demographic representativeness of the training data"),
            ("training_relevance", "Relevance of the training data to the intended deployed setting"),
        ),
    ),
    (
        "Process used to ensure fairness in development",
        (
            ("fairness_approach", "Approach taken to ensure the output is fair"),
            ("bias_management", "Approaches to manage, reduce or eliminate bias"),
        ),
    ),
    (
        "External validation process",
        (
            ("external_data_source", "Data source, clinical setting or environment of external validation"),
            ("external_validator", "Party that conducted the external testing"),
            ("external_representativeness", "Demographic representativeness of the external data"),
            ("external_process", "Description of the external validation process"),
        ),
    ),
    (
        "Quantitative measures of performance",
        (
            ("validity_internal", "Validity in test data from the training source"),
            ("fairness_internal", "Fairness in test data from the training source"),
            ("validity_external", "Validity in external data"),
            ("fairness_external", "Fairness in external data"),
            ("outcome_evaluations", "References to evaluations of use on outcomes"),
        ),
    ),
    (
        "Ongoing maintenance of implementation and use",
        (
            ("maintenance_schedule", "Update and continued validation or fairness assessment schedule"),
            ("validity_local", "Validity in local data"),
            ("fairness_local", "Fairness in local data"),
            ("local_outcome_evaluations", "References to evaluations of use on outcomes in local data"),
        ),
    ),
)

KNOWN_ATTRIBUTES = frozenset(key for _title, items in HTI1_SECTIONS for key, _label in items)


class ModelCard(BaseModel):
    """Attribute values by key (see ``HTI1_SECTIONS``); unknown keys are refused so typos surface."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="Veritrace draft radiology report", max_length=200)
    attributes: dict[str, str] = Field(default_factory=dict)

    def model_post_init(self, _context: object) -> None:
        unknown = sorted(set(self.attributes) - KNOWN_ATTRIBUTES)
        if unknown:
            raise ValueError(f"unknown HTI-1 attribute key(s): {', '.join(unknown)}")

    @classmethod
    def load(cls, path: Path | None) -> ModelCard:
        """The card in ``path``, or an empty one (every attribute *not provided*) when None."""
        if path is None:
            return cls()
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ValueError(f"model card file {path} is not valid: {exc}") from exc

    def sections(self) -> list[tuple[str, list[tuple[str, str, str | None]]]]:
        """(section title, [(key, label, value or None)]) in the HTI-1 order."""
        return [
            (title, [(key, label, self.attributes.get(key)) for key, label in items])
            for title, items in HTI1_SECTIONS
        ]

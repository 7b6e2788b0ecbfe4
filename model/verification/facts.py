"""Structured facts of one piece of evidence, the ground truth a statement is checked against.

An evidence item's ``display`` is prompt text, and text cannot say which number carries which unit or
whether a condition is active. The verifier therefore compares a statement with ``EvidenceFacts``: the
values with their units, the dates, the codes, the sides and whether the evidence asserts or denies its
concept. Facts are keyed by the citation id of the evidence (or image) they describe.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from model.report import Laterality


class FactQuantity(BaseModel):
    """A number the evidence states, with its unit as written (UCUM code or display); None: unitless."""

    model_config = ConfigDict(frozen=True)

    value: Decimal
    unit: str | None = None


class EvidenceFacts(BaseModel):
    """What one evidence item says, in a form a statement's claims can be compared with.

    ``names`` are the concept's names (code text, code displays): what a statement about it mentions.
    ``narrative`` holds free-text clauses (a report's conclusion); their numbers, dates and sides are
    already folded into the other fields, and each clause keeps its own negation for the negation check.
    ``asserted`` is True when the evidence says the concept is present now (active condition, active
    medication, positive finding), False when it says it is absent, resolved, stopped or refuted, and None
    when presence does not apply (a lab value, a patient's demographics).
    """

    model_config = ConfigDict(frozen=True)

    resource_type: str
    quantities: list[FactQuantity] = Field(default_factory=list)
    numbers: list[Decimal] = Field(default_factory=list)
    dates: list[date] = Field(default_factory=list)
    codes: list[str] = Field(default_factory=list)
    names: list[str] = Field(default_factory=list)
    narrative: list[str] = Field(default_factory=list)
    laterality: list[Laterality] = Field(default_factory=list)
    asserted: bool | None = None

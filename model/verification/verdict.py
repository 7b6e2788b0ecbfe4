"""The verifier's verdicts: one per statement, and the report with unsupported statements removed."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from model.report import DraftReport, Statement


class RejectionReason(StrEnum):
    """Why a statement was removed; the first failing check, in the order the verifier runs them."""

    MISSING_CITATION = "missing_citation"
    UNKNOWN_CITATION = "unknown_citation"
    UNRELATED_EVIDENCE = "unrelated_evidence"
    NUMBER_MISMATCH = "number_mismatch"
    UNIT_MISMATCH = "unit_mismatch"
    DATE_MISMATCH = "date_mismatch"
    LATERALITY_MISMATCH = "laterality_mismatch"
    NEGATION_MISMATCH = "negation_mismatch"


class StatementVerdict(BaseModel):
    """The verdict on one statement of the draft; ``detail`` says what did not match, for the trace.

    ``detail`` quotes the statement's own claim and the cited evidence ids, which belong in the decision
    trace (an audited document about this patient), never in application logs.
    """

    section: Literal["findings", "impression"]
    index: int = Field(ge=0)
    statement: Statement
    supported: bool
    reason: RejectionReason | None = None
    detail: str = ""


class VerifiedReport(BaseModel):
    """The draft with rejected statements removed, and every verdict in draft order."""

    report: DraftReport
    verdicts: list[StatementVerdict]

    @property
    def rejected(self) -> list[StatementVerdict]:
        return [v for v in self.verdicts if not v.supported]

    @property
    def supported(self) -> list[StatementVerdict]:
        return [v for v in self.verdicts if v.supported]

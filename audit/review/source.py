"""What the review app reads from the store, declared here because ``audit`` imports nothing else.

``integrations.store.review_source.SqlTraceSource`` implements ``TraceSource`` over the store's tables;
the app only ever sees these models. Patient and study identifiers appear in the models (reviewers are
entitled to them, and every view of a trace is audited) but never in URLs or logs.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Outcome(StrEnum):
    """What clinicians did with the cards of an analysis: the latest feedback wins."""

    ACCEPTED = "accepted"
    OVERRIDDEN = "overridden"
    NONE = "none"


class AnalysisFilters(BaseModel):
    """Search filters of the analyses list; every one is optional and they combine with AND."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patient_id: str | None = Field(default=None, min_length=1, max_length=64)
    study_uid: str | None = Field(default=None, min_length=1, max_length=64)
    date_from: date | None = None
    date_to: date | None = None
    """Inclusive: analyses queued on or before this day (UTC)."""
    model_version: str | None = Field(default=None, min_length=4, max_length=64)
    """A prefix of the weights SHA-256 (at least 4 hex digits), as shown in the list."""
    outcome: Outcome | None = None
    verification_failures: bool | None = None
    """True: only analyses with a rejected statement; False: only those without."""

    @model_validator(mode="after")
    def _dates_in_order(self) -> AnalysisFilters:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError(f"date_from {self.date_from} is after date_to {self.date_to}")
        return self


class PageRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    page: int = Field(default=1, ge=1, le=100_000)
    per_page: int = Field(default=25, ge=1, le=100)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


class AnalysisSummary(BaseModel):
    """One row of the analyses list."""

    id: str
    study_uid: str
    patient_id: str | None
    status: str
    queued_at: datetime
    completed_at: datetime | None
    architecture: str | None
    model_version: str | None
    """The weights SHA-256 of the model that ran (None before it ran)."""
    untrained_model: bool
    severity: str | None
    statements: int
    rejected_statements: int
    outcome: Outcome


class AnalysisPage(BaseModel):
    items: list[AnalysisSummary]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


class EvidenceView(BaseModel):
    """One FHIR resource version the model was shown."""

    id: str
    resource_type: str
    resource_id: str
    version_id: str | None = None
    sha256: str | None = None
    display: str = ""


class ImageView(BaseModel):
    """One frame the model looked at; ``position`` is what thumbnail URLs use (never a UID)."""

    position: int
    citation_id: str
    series_uid: str
    sop_uid: str
    frame: int


class StepView(BaseModel):
    """One trace step in order; tool calls carry the evidence ids they returned."""

    kind: str
    at: datetime | None
    detail: dict[str, Any]
    evidence_ids: list[str] = Field(default_factory=list)


class StatementView(BaseModel):
    """A drafted statement and what the verifier said about it."""

    section: Literal["findings", "impression"]
    index: int
    text: str
    severity: str
    laterality: str
    citations: list[str]
    verdict: Literal["supported", "rejected", "unverified"]
    reason: str | None = None
    detail: str = ""


class FeedbackRecord(BaseModel):
    """One clinician's accept / override of a card built from this analysis."""

    card_uuid: str
    service_id: str
    outcome: Literal["accepted", "overridden"]
    override_reason: str | None
    comment: str | None
    accepted_suggestions: list[str]
    outcome_timestamp: datetime


class TraceDetail(BaseModel):
    """Everything the trace page shows about one analysis."""

    summary: AnalysisSummary
    model: dict[str, Any]
    prompt_sha256: str | None
    elapsed_s: float | None
    error: str | None
    steps: list[StepView]
    evidence: list[EvidenceView]
    images: list[ImageView]
    statements: list[StatementView]
    markdown: str | None
    feedback: list[FeedbackRecord]


class SeriesPoint(BaseModel):
    """Volumes and rates of one model version in one period (a UTC day or ISO week's Monday)."""

    period: date
    model_version: str
    analyses: int
    with_feedback: int
    overridden: int
    statements: int
    rejected_statements: int

    @property
    def override_rate(self) -> float | None:
        return self.overridden / self.with_feedback if self.with_feedback else None

    @property
    def verification_failure_rate(self) -> float | None:
        return self.rejected_statements / self.statements if self.statements else None


class TraceSource(Protocol):
    """The read side of the store that the review app needs."""

    def list_analyses(self, filters: AnalysisFilters, page: PageRequest) -> AnalysisPage:
        """Newest first."""
        ...

    def get_trace(self, analysis_id: str) -> TraceDetail | None: ...

    def feedback_for(self, analysis_id: str) -> list[FeedbackRecord]: ...

    def thumbnail_png(self, analysis_id: str, position: int, max_side: int) -> bytes | None:
        """The frame at ``position`` of the trace's images as a PNG, or None if it is not available."""
        ...

    def dashboard_series(
        self, date_from: date, date_to: date, bucket: Literal["day", "week"]
    ) -> list[SeriesPoint]:
        """Per period and model version; periods without analyses are absent."""
        ...

"""FHIR OperationOutcome bodies for every CDS Hooks error response.

EHRs log the body of a failed hook call; an OperationOutcome is the one error shape their FHIR tooling
already understands. Messages here are written by us and never echo request content, which can carry
patient data.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

IssueCode = Literal[
    "invalid",
    "structure",
    "required",
    "value",
    "security",
    "login",
    "forbidden",
    "not-found",
    "not-supported",
    "incomplete",
    "timeout",
    "transient",
    "exception",
    "processing",
]


class OperationOutcomeIssue(BaseModel):
    severity: Literal["fatal", "error", "warning", "information"] = "error"
    code: IssueCode
    diagnostics: str


class OperationOutcome(BaseModel):
    resourceType: Literal["OperationOutcome"] = "OperationOutcome"
    issue: list[OperationOutcomeIssue]


class CdsError(Exception):
    """An error answered as ``status`` with an OperationOutcome; raised anywhere on the request path."""

    def __init__(
        self, status: int, code: IssueCode, diagnostics: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.headers = headers or {}

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.code, self.diagnostics)


def operation_outcome(code: IssueCode, diagnostics: str) -> dict[str, Any]:
    """One-issue OperationOutcome as a JSON-ready dict."""
    return OperationOutcome(issue=[OperationOutcomeIssue(code=code, diagnostics=diagnostics)]).model_dump()

"""Typed failures of FHIR calls, split by what the caller should do next.

``FhirUnavailable`` is retryable (Celery tasks list it in ``autoretry_for``); ``FhirRequestError`` is
not: the same request would be refused again. Messages name the interaction, resource type and status
and never quote resource contents or server diagnostics, which can echo patient data.
"""

from __future__ import annotations

from typing import Any


class FhirError(Exception):
    """Base class of every error raised by ``integrations.fhir``."""


class FhirUnavailable(FhirError):
    """The server could not be reached, timed out, or answered 5xx / 429: try again later."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class FhirRequestError(FhirError):
    """The server refused the request (4xx); ``outcome`` is its OperationOutcome when it sent one."""

    def __init__(self, message: str, *, status: int, outcome: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome

    @property
    def issue_codes(self) -> list[str]:
        """``OperationOutcome.issue.code`` values, e.g. ``["not-found"]``."""
        return [str(i.get("code")) for i in _issues(self.outcome)]

    @property
    def diagnostics(self) -> list[str]:
        """Server diagnostics; may quote submitted data, so keep them out of logs."""
        return [str(i["diagnostics"]) for i in _issues(self.outcome) if i.get("diagnostics")]


class FhirResponseError(FhirError):
    """The server answered 2xx with something that is not the FHIR content that was asked for."""


class FhirValidationError(FhirError, ValueError):
    """A resource Veritrace built or was given does not validate against the FHIR R4 model."""

    def __init__(self, resource_type: str, problems: list[str]) -> None:
        super().__init__(f"{resource_type} does not validate: " + "; ".join(problems))
        self.resource_type = resource_type
        self.problems = problems


def _issues(outcome: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not outcome or outcome.get("resourceType") != "OperationOutcome":
        return []
    return [i for i in outcome.get("issue", []) if isinstance(i, dict)]

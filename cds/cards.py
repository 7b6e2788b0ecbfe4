"""The CDS Hooks 2.0 response model: cards, suggestions, actions, links.

Every rule the specification states for a card is enforced when the card is built, so a handler cannot
return something an EHR must treat as an error: summary under 140 characters, indicator from the enum,
a source label, ``selectionBehavior`` whenever there are suggestions, display text on every override
reason, link types ``absolute`` / ``smart`` (``appContext`` only on ``smart``), a resource on
create/update and a ``resourceId`` on delete. Optional members are omitted, never null or empty
(spec: "JSON elements SHALL NOT be null ... or empty").
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SUMMARY_MAX_CHARS = 139  # spec: "<140-character summary"


class Indicator(StrEnum):
    """Card urgency, in increasing order (spec: info, warning, critical)."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


def _absolute_url(value: str, field: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{field} must be an absolute http(s) URL, got {value!r}")
    return value


class _CdsModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> dict[str, Any]:
        """The wire form: unset optional members omitted rather than null."""
        return self.model_dump(mode="json", exclude_none=True)


class Coding(_CdsModel):
    system: str | None = None
    code: str = Field(min_length=1)
    display: str | None = None


class OverrideReason(Coding):
    """A Coding offered as an override reason; the spec requires its display text."""

    display: str = Field(min_length=1)


class Source(_CdsModel):
    label: str = Field(min_length=1)
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None

    @field_validator("url", "icon")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return None if value is None else _absolute_url(value, "source url/icon")


class Link(_CdsModel):
    label: str = Field(min_length=1)
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None

    @field_validator("url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _absolute_url(value, "link url")

    @model_validator(mode="after")
    def _app_context_only_on_smart(self) -> Link:
        if self.appContext is not None and self.type != "smart":
            raise ValueError("link appContext is only valid on links of type 'smart'")
        return self


class Action(_CdsModel):
    type: Literal["create", "update", "delete"]
    description: str = Field(min_length=1)
    resource: dict[str, Any] | None = None
    resourceId: str | None = None

    @model_validator(mode="after")
    def _target(self) -> Action:
        if self.type in ("create", "update"):
            if not self.resource or "resourceType" not in self.resource:
                raise ValueError(f"a {self.type} action needs a FHIR resource")
        elif not self.resourceId or "/" not in self.resourceId:
            raise ValueError("a delete action needs resourceId as a relative reference (Type/id)")
        return self


class Suggestion(_CdsModel):
    label: str = Field(min_length=1)
    uuid: str = Field(default_factory=lambda: str(uuid.uuid4()))
    isRecommended: bool | None = None
    actions: tuple[Action, ...] | None = None

    @field_validator("actions")
    @classmethod
    def _not_empty(cls, value: tuple[Action, ...] | None) -> tuple[Action, ...] | None:
        return value or None


class Card(_CdsModel):
    uuid: str = Field(default_factory=lambda: str(uuid.uuid4()))
    summary: str = Field(min_length=1, max_length=SUMMARY_MAX_CHARS)
    detail: str | None = None
    indicator: Indicator
    source: Source
    suggestions: tuple[Suggestion, ...] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: tuple[OverrideReason, ...] | None = None
    links: tuple[Link, ...] | None = None
    extension: dict[str, Any] | None = None

    @field_validator("suggestions", "overrideReasons", "links", "extension")
    @classmethod
    def _omit_empty(cls, value: Any) -> Any:
        return value or None

    @model_validator(mode="after")
    def _selection_behavior(self) -> Card:
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("selectionBehavior is required when a card has suggestions")
        if not self.suggestions and self.selectionBehavior is not None:
            raise ValueError("selectionBehavior without suggestions")
        return self


class CdsResponse(_CdsModel):
    cards: tuple[Card, ...] = ()
    # `cards` is the one member the spec allows to be empty: exclude_none keeps `[]`.
    systemActions: tuple[Action, ...] | None = None


def shorten_summary(text: str) -> str:
    """Fit free text (e.g. a report summary of up to 140 characters) into a card summary."""
    text = " ".join(text.split())
    if len(text) <= SUMMARY_MAX_CHARS:
        return text
    return text[: SUMMARY_MAX_CHARS - 1].rstrip() + "…"

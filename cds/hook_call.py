"""What a card builder is given and what it gives back; the route does the rest (auth, audit, storage)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from cds.cards import Card, Coding, OverrideReason, Source
from cds.hook_request import HookRequest
from cds.prefetch import ResolvedPrefetch

OVERRIDE_SYSTEM = "urn:veritrace:cds:override-reason"
TOPIC_SYSTEM = "urn:veritrace:cds:topic"


@dataclass(frozen=True)
class HookCall:
    service_id: str
    request: HookRequest
    context: BaseModel
    prefetch: ResolvedPrefetch
    session_factory: sessionmaker[Session]
    public_base_url: str
    now: datetime
    smart_viewer: bool = False
    """The draft viewer is a registered SMART app here (``CdsRuntime.smart_viewer``)."""


@dataclass
class HookOutcome:
    """Cards to return, the report each card is about, and why anything was left out (no patient data)."""

    cards: list[Card] = field(default_factory=list)
    card_reports: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def override_reasons(*pairs: tuple[str, str]) -> tuple[OverrideReason, ...]:
    return tuple(
        OverrideReason(system=OVERRIDE_SYSTEM, code=code, display=display) for code, display in pairs
    )


def source(label: str, topic_code: str, topic_display: str) -> Source:
    return Source(label=label, topic=Coding(system=TOPIC_SYSTEM, code=topic_code, display=topic_display))

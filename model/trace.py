"""Trace steps: what the runtime did for one study, in order, for the audit ledger.

Steps hold digests, ids, counts and the model's output, never pixel data; the caller's step sink decides
where they go (the ledger), so `model` stays free of any storage.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field


class TraceStep(BaseModel):
    """One step: `kind` names it (`model`, `prompt`, `generation`, `citations`, `report`)."""

    kind: str
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    detail: dict[str, Any] = Field(default_factory=dict)


StepSink = Callable[[TraceStep], None]

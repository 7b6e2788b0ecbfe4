"""The clinician's accept / override, recorded exactly as CDS Hooks feedback on the card.

``cds.feedback.record_feedback`` stores it (checked against the stored card) and the ledger gets the
same ``cds.feedback`` entry the feedback endpoint writes, with the clinician as actor. Nothing is
written to the patient's chart: signing the report as final is the RIS's job.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.orm import Session

from audit import Ledger
from cds.cards import Coding
from cds.feedback import FeedbackItem, OverrideReasonFeedback, RecordedFeedback, record_feedback
from cds.hook_audit import patient_ref_for
from cds.viewer.errors import ViewerRefusal
from cds.viewer.launch_state import ViewerSession
from cds.viewer.report_view import OverrideReasonView
from integrations.store.models import Card as StoredCard


class ClinicianAction(BaseModel):
    """What the page posts: accept, or override with one of the card's reasons and optional text."""

    model_config = ConfigDict(extra="forbid")

    outcome: Literal["accepted", "overridden"]
    reason: str | None = Field(default=None, max_length=64)
    comment: str | None = Field(default=None, max_length=4000)

    @model_validator(mode="after")
    def _reason_only_on_override(self) -> ClinicianAction:
        if self.outcome == "overridden" and not self.reason:
            raise ValueError("an override needs a reason")
        if self.outcome == "accepted" and (self.reason or self.comment):
            raise ValueError("reason and comment are only for an override")
        return self


def _item(action: ClinicianAction, card_uuid: str, reasons: tuple[OverrideReasonView, ...]) -> FeedbackItem:
    now = datetime.now(UTC)
    if action.outcome == "accepted":
        # CDS Hooks requires acceptedSuggestions on EHR-sent "accepted" feedback; the report card has no
        # suggestions, and the clinician accepts the card itself, so the checked fields are built here.
        return FeedbackItem.model_construct(
            card=card_uuid,
            outcome="accepted",
            acceptedSuggestions=None,
            overrideReason=None,
            outcomeTimestamp=now,
        )
    chosen = next((r for r in reasons if r.code == action.reason), None)
    if chosen is None:
        raise ViewerRefusal(400, "Unknown override reason", "choose one of the card's override reasons.")
    return FeedbackItem(
        card=card_uuid,
        outcome="overridden",
        overrideReason=OverrideReasonFeedback(
            reason=Coding(system=chosen.system, code=chosen.code, display=chosen.display),
            userComment=(action.comment or "").strip() or None,
        ),
        outcomeTimestamp=now,
    )


def record_clinician_action(
    db: Session,
    ledger: Ledger,
    *,
    session: ViewerSession,
    card_uuid: str,
    reasons: tuple[OverrideReasonView, ...],
    action: ClinicianAction,
) -> RecordedFeedback:
    """Store the feedback and append its ledger entry; the comment stays out of the ledger."""
    started = time.perf_counter()
    card = db.get(StoredCard, card_uuid)
    if card is None or card.report_id != session.report_id or card.patient_id != session.patient_id:
        raise ViewerRefusal(403, "This card is not about this launch's draft", "nothing was recorded.")
    item = _item(action, card_uuid, reasons)
    recorded = record_feedback(db, service_id=card.service_id, items=[item], received_at=datetime.now(UTC))[0]
    ledger.append(
        "cds.feedback",
        f"smart-user:{session.user or 'unknown'}",
        {
            "service": card.service_id,
            "card": recorded.card_uuid,
            "outcome": recorded.outcome,
            "reportId": recorded.report_id,
            "overrideReason": recorded.reason_code,
            "userComment": recorded.has_comment,
            "acceptedSuggestions": list(recorded.accepted),
            "via": "viewer",
            "latencyMs": round((time.perf_counter() - started) * 1000, 2),
        },
        patient_ref=patient_ref_for(recorded.patient_id),
    )
    return recorded

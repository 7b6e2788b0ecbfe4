"""Feedback on our cards (spec §Feedback): validated, stored, linked to the card it is about.

Feedback must name a card this service returned; an accepted suggestion must be one of that card's
suggestions. Both are checked against the stored card, so a client cannot record feedback about cards
that never existed. The clinician's free-text comment is stored with the feedback but kept out of the
audit payload, as it may mention the patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from cds.cards import Coding
from cds.operation_outcome import CdsError
from integrations.store.models import Card as StoredCard
from integrations.store.models import Feedback


class AcceptedSuggestion(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=64)


class OverrideReasonFeedback(BaseModel):
    model_config = ConfigDict(extra="allow")

    reason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=4000)


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    card: str = Field(min_length=1, max_length=45)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReasonFeedback | None = None
    outcomeTimestamp: AwareDatetime

    @field_validator("card")
    @classmethod
    def _plain_uuid(cls, value: str) -> str:
        return value.removeprefix("urn:uuid:")

    @model_validator(mode="after")
    def _outcome_fields(self) -> FeedbackItem:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is required when outcome is 'accepted'")
        if self.outcome == "overridden" and self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is only valid when outcome is 'accepted'")
        if self.outcome == "accepted" and self.overrideReason is not None:
            raise ValueError("overrideReason is only valid when outcome is 'overridden'")
        return self


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    feedback: list[FeedbackItem] = Field(min_length=1, max_length=100)


@dataclass(frozen=True)
class RecordedFeedback:
    card_uuid: str
    outcome: str
    patient_id: str | None
    report_id: str | None
    reason_code: str | None
    has_comment: bool
    accepted: tuple[str, ...]


def record_feedback(
    session: Session, *, service_id: str, items: list[FeedbackItem], received_at: datetime
) -> list[RecordedFeedback]:
    """Store every item or none; raises ``CdsError(400)`` naming the first card that does not check out."""
    uuids = {item.card for item in items}
    cards = {
        card.uuid: card
        for card in session.scalars(select(StoredCard).where(StoredCard.uuid.in_(uuids))).all()
    }
    recorded = []
    for position, item in enumerate(items):
        card = cards.get(item.card)
        if card is None or card.service_id != service_id:
            raise CdsError(400, "value", f"feedback[{position}].card is not a card returned by this service")
        offered = {s.get("uuid") for s in card.payload.get("suggestions", []) if isinstance(s, dict)}
        accepted = tuple(s.id for s in item.acceptedSuggestions or [])
        if not set(accepted) <= offered:
            raise CdsError(
                400, "value", f"feedback[{position}].acceptedSuggestions names a suggestion not on that card"
            )
        reason = item.overrideReason
        session.add(
            Feedback(
                card_uuid=card.uuid,
                service_id=service_id,
                outcome=item.outcome,
                override_reason=reason.model_dump(mode="json", exclude_none=True) if reason else None,
                accepted_suggestions=list(accepted) or None,
                outcome_timestamp=item.outcomeTimestamp,
                received_at=received_at,
            )
        )
        recorded.append(
            RecordedFeedback(
                card_uuid=card.uuid,
                outcome=item.outcome,
                patient_id=card.patient_id,
                report_id=card.report_id,
                reason_code=reason.reason.code if reason and reason.reason else None,
                has_comment=bool(reason and reason.userComment),
                accepted=accepted,
            )
        )
    session.commit()
    return recorded

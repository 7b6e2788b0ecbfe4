"""Queries over stored draft reports for the card builders (read-only; the worker writes them)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from integrations.store.models import Card, Feedback, Report


def current_drafts(session: Session, *, patient_id: str) -> list[Report]:
    """The patient's draft reports, newest first, at most one per study (a newer draft replaces older)."""
    rows = session.scalars(
        select(Report)
        .where(Report.patient_id == patient_id, Report.status == "draft")
        .order_by(Report.created_at.desc())
    ).all()
    seen: set[str] = set()
    drafts: list[Report] = []
    for report in rows:
        if report.study_uid not in seen:
            seen.add(report.study_uid)
            drafts.append(report)
    return drafts


def acknowledged_report_ids(session: Session, *, report_ids: Iterable[str]) -> set[str]:
    """Reports whose card a clinician accepted (feedback ``accepted``): their findings count as resolved."""
    wanted = list(report_ids)
    if not wanted:
        return set()
    rows = session.execute(
        select(Card.report_id)
        .join(Feedback, Feedback.card_uuid == Card.uuid)
        .where(Card.report_id.in_(wanted), Feedback.outcome == "accepted")
    ).all()
    return {row[0] for row in rows if row[0] is not None}

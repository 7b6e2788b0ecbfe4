"""CDS hook calls as the ledger recorded them (``cds.hook`` entries), for the hook-calls list.

They are read straight from the ledger's own table: the ledger is the record of what the EHR asked and
what it got back, and this package owns that table.
"""

from __future__ import annotations

import json
from datetime import date, timedelta

import sqlalchemy as sa
from pydantic import BaseModel

from audit.ledger import Ledger
from audit.review.source import PageRequest
from audit.tables import entries

HOOK_KIND = "cds.hook"


class HookCallSummary(BaseModel):
    index: int
    recorded_at: str
    actor: str
    patient_ref: str | None
    service: str | None
    hook: str | None
    status: int | None
    cards: int
    latency_ms: float | None


class HookCallPage(BaseModel):
    items: list[HookCallSummary]
    total: int
    page: int
    per_page: int


def list_hook_calls(
    ledger: Ledger,
    page: PageRequest,
    *,
    patient_id: str | None = None,
    date_from: date | None = None,
    date_to: date | None = None,
) -> HookCallPage:
    """Newest first. ``recorded_at`` is RFC 3339 UTC of fixed width, so string order is time order."""
    where = [entries.c.kind == HOOK_KIND]
    if patient_id:
        where.append(entries.c.patient_ref == f"Patient/{patient_id}")
    if date_from:
        where.append(entries.c.recorded_at >= date_from.isoformat())
    if date_to:
        where.append(entries.c.recorded_at < (date_to + timedelta(days=1)).isoformat())
    with ledger.engine.connect() as conn:
        total = int(conn.execute(sa.select(sa.func.count()).select_from(entries).where(*where)).scalar_one())
        rows = conn.execute(
            sa.select(entries)
            .where(*where)
            .order_by(entries.c.leaf_index.desc())
            .offset(page.offset)
            .limit(page.per_page)
        ).all()
    items = []
    for row in rows:
        payload = json.loads(row.payload) if row.payload else {}
        status = payload.get("status")
        latency = payload.get("latencyMs")
        items.append(
            HookCallSummary(
                index=int(row.leaf_index),
                recorded_at=row.recorded_at,
                actor=row.actor,
                patient_ref=row.patient_ref,
                service=payload.get("service"),
                hook=payload.get("hook"),
                status=status if isinstance(status, int) else None,
                cards=int(payload.get("cards", 0) or 0),
                latency_ms=float(latency) if isinstance(latency, int | float) else None,
            )
        )
    return HookCallPage(items=items, total=total, page=page.page, per_page=page.per_page)

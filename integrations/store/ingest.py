"""Index writes for received DICOM instances: one row per instance version, study bookkeeping.

Callers own the transaction (the SCP commits per instance, STOW-RS once per request so a request is an
atomic study). Concurrent associations may deliver the same study or the same instance at the same time:
every insert is `ON CONFLICT DO NOTHING` against a unique key, so the race resolves in the database.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from integrations.store.models import Instance, Study

STUDY_RECEIVING = "receiving"
STUDY_STABLE = "stable"
# Stable, but routing rules select none of its instances for analysis.
STUDY_IGNORED = "ignored"


class IngestOutcome(enum.Enum):
    STORED = "stored"
    # Same SOP Instance UID, same bytes: nothing new was written.
    DUPLICATE = "duplicate"
    # Same SOP Instance UID, different bytes: a second version was kept and both are flagged.
    CONFLICT = "conflict"


@dataclass(frozen=True)
class InstanceFacts:
    """Everything the index stores about one received file. `patient_id` is PHI: never log it."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    body_part: str | None
    patient_id: str | None
    accession_number: str | None
    spool_path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class RecordedInstance:
    study_id: int
    instance_id: int
    outcome: IngestOutcome


def _insert_for(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"ingest supports PostgreSQL and SQLite, not {dialect}")


def ensure_study(session: Session, facts: InstanceFacts, *, calling_ae: str | None, now: datetime) -> int:
    """Return the study's id, creating the row if this is its first instance (race-safe)."""
    stmt = (
        _insert_for(session, Study)
        .values(
            study_uid=facts.study_uid,
            patient_id=facts.patient_id,
            accession_number=facts.accession_number,
            modality=facts.modality,
            calling_ae=calling_ae,
            first_received_at=now,
            last_received_at=now,
            state=STUDY_RECEIVING,
            instance_count=0,
        )
        .on_conflict_do_nothing(index_elements=["study_uid"])
    )
    session.execute(stmt)
    return int(session.execute(select(Study.id).where(Study.study_uid == facts.study_uid)).scalar_one())


def record_instance(
    session: Session, facts: InstanceFacts, *, calling_ae: str | None, now: datetime
) -> RecordedInstance:
    """Index one instance version; the caller commits. A repeat of known bytes changes nothing."""
    study_id = ensure_study(session, facts, calling_ae=calling_ae, now=now)
    versions = session.execute(
        select(Instance.id, Instance.sha256).where(Instance.sop_instance_uid == facts.sop_instance_uid)
    ).all()
    for instance_id, sha256 in versions:
        if sha256 == facts.sha256:
            return RecordedInstance(study_id, instance_id, IngestOutcome.DUPLICATE)
    conflict = bool(versions)
    inserted = session.execute(
        _insert_for(session, Instance)
        .values(
            study_id=study_id,
            series_uid=facts.series_uid,
            sop_instance_uid=facts.sop_instance_uid,
            sop_class_uid=facts.sop_class_uid,
            transfer_syntax_uid=facts.transfer_syntax_uid,
            modality=facts.modality,
            body_part=facts.body_part,
            spool_path=facts.spool_path,
            size_bytes=facts.size_bytes,
            sha256=facts.sha256,
            conflict=conflict,
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=["sop_instance_uid", "sha256"])
        .returning(Instance.id)
    ).scalar_one_or_none()
    if inserted is None:  # another association indexed the same bytes a moment ago
        existing = session.execute(
            select(Instance.id).where(
                Instance.sop_instance_uid == facts.sop_instance_uid, Instance.sha256 == facts.sha256
            )
        ).scalar_one()
        return RecordedInstance(study_id, int(existing), IngestOutcome.DUPLICATE)
    if conflict:
        session.execute(
            update(Instance).where(Instance.sop_instance_uid == facts.sop_instance_uid).values(conflict=True)
        )
    session.execute(
        update(Study)
        .where(Study.id == study_id)
        .values(
            instance_count=Study.instance_count + 1,
            last_received_at=now,
            state=STUDY_RECEIVING,
        )
    )
    outcome = IngestOutcome.CONFLICT if conflict else IngestOutcome.STORED
    return RecordedInstance(study_id, int(inserted), outcome)

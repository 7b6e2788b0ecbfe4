"""Index writes for received DICOM instances: one row per instance version, study bookkeeping.

Callers own the transaction (the SCP's indexer thread commits a batch of instances per transaction,
STOW-RS once per request so a request is an atomic study). Concurrent associations may deliver the same
study or the same instance at the same time, within one batch too: every insert is `ON CONFLICT DO
NOTHING` against a unique key, so the race resolves in the database.
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from integrations.store.models import Instance, Study
from integrations.store.purged_paths import is_purged

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


_STUDIES: Table = Study.__table__  # type: ignore[assignment]  # a declarative class maps one Table
_INSTANCES: Table = Instance.__table__  # type: ignore[assignment]
# Built once: on the receive path SQLAlchemy's per-call statement construction cost more than the
# database work itself (several statements per instance at hundreds of instances a second).
_SELECT_STUDY_ID = select(_STUDIES.c.id).where(_STUDIES.c.study_uid == bindparam("b_study_uid"))
_SELECT_VERSIONS = select(_INSTANCES.c.id, _INSTANCES.c.sha256, _INSTANCES.c.spool_path).where(
    _INSTANCES.c.sop_instance_uid == bindparam("b_sop_uid")
)
_RESTORE_PATH = (
    update(_INSTANCES).where(_INSTANCES.c.id == bindparam("b_id")).values(spool_path=bindparam("b_path"))
)
_MARK_CONFLICT = (
    update(_INSTANCES).where(_INSTANCES.c.sop_instance_uid == bindparam("b_sop_uid")).values(conflict=True)
)
_TOUCH_STUDY = (
    update(_STUDIES)
    .where(_STUDIES.c.id == bindparam("b_study_id"))
    .values(
        instance_count=_STUDIES.c.instance_count + 1,
        last_received_at=bindparam("b_now"),
        state=STUDY_RECEIVING,
    )
)
_INSERTS: dict[tuple[str, str], Any] = {}


def _insert_for(connection: Connection, table: Any) -> Any:
    dialect = connection.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"ingest supports PostgreSQL and SQLite, not {dialect}")


def _insert_ignoring_conflict(
    connection: Connection, table: Any, keys: list[str], returning: Any | None
) -> Any:
    """INSERT ... ON CONFLICT (keys) DO NOTHING [RETURNING], built once per dialect and table."""
    cache_key = (connection.dialect.name, str(table.name))
    stmt = _INSERTS.get(cache_key)
    if stmt is None:
        stmt = _insert_for(connection, table).on_conflict_do_nothing(index_elements=keys)
        if returning is not None:
            stmt = stmt.returning(returning)
        _INSERTS[cache_key] = stmt
    return stmt


class StudyIds:
    """study UID -> row id for the studies a receiver has seen; rows are never deleted, so ids never go
    stale. Bounded, so a gateway running for months keeps a small working set."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, study_uid: str) -> int | None:
        with self._lock:
            found = self._ids.get(study_uid)
            if found is not None:
                self._ids.move_to_end(study_uid)
            return found

    def put(self, study_uid: str, study_id: int) -> None:
        with self._lock:
            self._ids[study_uid] = study_id
            self._ids.move_to_end(study_uid)
            while len(self._ids) > self._capacity:
                self._ids.popitem(last=False)


def ensure_study(
    connection: Connection, facts: InstanceFacts, *, calling_ae: str | None, now: datetime
) -> int:
    """Return the study's id, creating the row if this is its first instance (race-safe)."""
    connection.execute(
        _insert_ignoring_conflict(connection, _STUDIES, ["study_uid"], None),
        {
            "study_uid": facts.study_uid,
            "patient_id": facts.patient_id,
            "accession_number": facts.accession_number,
            "modality": facts.modality,
            "calling_ae": calling_ae,
            "first_received_at": now,
            "last_received_at": now,
            "state": STUDY_RECEIVING,
            "instance_count": 0,
        },
    )
    return int(connection.execute(_SELECT_STUDY_ID, {"b_study_uid": facts.study_uid}).scalar_one())


def record_instance(
    target: Session | Connection,
    facts: InstanceFacts,
    *,
    calling_ae: str | None,
    now: datetime,
    study_ids: StudyIds | None = None,
) -> RecordedInstance:
    """Index one instance version; the caller commits. A repeat of known bytes changes nothing.

    `target` is the caller's transaction: a Session (STOW-RS, tests) or a bare Connection (the SCP's hot
    path, where the ORM session's own bookkeeping cost more than the statements).

    `study_ids` is only read here: the caller adds the study's id after its commit, so an id from a
    rolled-back transaction is never remembered.
    """
    connection = target.connection() if isinstance(target, Session) else target
    study_id = study_ids.get(facts.study_uid) if study_ids is not None else None
    if study_id is None:
        study_id = ensure_study(connection, facts, calling_ae=calling_ae, now=now)
    versions = connection.execute(_SELECT_VERSIONS, {"b_sop_uid": facts.sop_instance_uid}).all()
    for instance_id, sha256, spool_path in versions:
        if sha256 == facts.sha256:
            if not is_purged(spool_path):
                return RecordedInstance(study_id, instance_id, IngestOutcome.DUPLICATE)
            # Retention deleted this file and the PACS sent the same bytes again: the row points at the
            # file once more (otherwise the new copy would sit in the spool, unreferenced).
            connection.execute(_RESTORE_PATH, {"b_id": instance_id, "b_path": facts.spool_path})
            connection.execute(_TOUCH_STUDY, {"b_study_id": study_id, "b_now": now})
            return RecordedInstance(study_id, instance_id, IngestOutcome.STORED)
    conflict = bool(versions)
    inserted = connection.execute(
        _insert_ignoring_conflict(connection, _INSTANCES, ["sop_instance_uid", "sha256"], _INSTANCES.c.id),
        {
            "study_id": study_id,
            "series_uid": facts.series_uid,
            "sop_instance_uid": facts.sop_instance_uid,
            "sop_class_uid": facts.sop_class_uid,
            "transfer_syntax_uid": facts.transfer_syntax_uid,
            "modality": facts.modality,
            "body_part": facts.body_part,
            "spool_path": facts.spool_path,
            "size_bytes": facts.size_bytes,
            "sha256": facts.sha256,
            "conflict": conflict,
            "received_at": now,
        },
    ).scalar_one_or_none()
    if inserted is None:  # another association indexed the same bytes a moment ago
        existing = connection.execute(
            select(Instance.id).where(
                Instance.sop_instance_uid == facts.sop_instance_uid, Instance.sha256 == facts.sha256
            )
        ).scalar_one()
        return RecordedInstance(study_id, int(existing), IngestOutcome.DUPLICATE)
    if conflict:
        connection.execute(_MARK_CONFLICT, {"b_sop_uid": facts.sop_instance_uid})
    connection.execute(_TOUCH_STUDY, {"b_study_id": study_id, "b_now": now})
    outcome = IngestOutcome.CONFLICT if conflict else IngestOutcome.STORED
    return RecordedInstance(study_id, int(inserted), outcome)

"""Retention: delete the spool files of finished studies and the stored decision traces after a set time.

Kept whatever the settings: the audit ledger (its tables refuse UPDATE and DELETE anyway), and every index
row (studies, instances, analyses, reports, SR exports). What goes:
- the spool files of a study that is finished and quiet: stable (or ignored by the routing rules), every
  analysis completed or failed (a dead-lettered analysis is failed), no SR export still pending, and
  nothing received and no analysis finished for `spool_days`. Each row keeps its old path behind
  `purged:` (`integrations.dicom.spool.purged_marker`), so readers say "purged", not "missing";
- the decision trace stored with an analysis (`analyses.trace`: the evidence and steps that ledger
  entries point to by analysis id) once the analysis finished `trace_days` ago. A small tombstone takes
  its place: when, after how many days, and the SHA-256 of the canonical trace, so an archived copy can
  still be matched.

One run writes one ledger entry, counts only (no UIDs, no patient references). A dry run counts the same
things and changes nothing, the ledger included. Runs are exclusive across processes (an advisory lock on
PostgreSQL), so several dicom processes can each schedule them.

Order within a study: mark the rows, delete the files, commit. A crash before the commit leaves rows
unmarked whose files are gone; the study is still eligible, so the next run marks them (deleting
nothing twice). The opposite order could leave files nobody points to.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, Engine, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from audit.canonical import canonical_json
from integrations.dicom.audit_port import AuditLedger
from integrations.dicom.spool import PURGED_PREFIX, Spool
from integrations.ops.retention_config import RetentionConfig
from integrations.store.ingest import STUDY_IGNORED, STUDY_STABLE
from integrations.store.models import Analysis, Instance, SrExport, Study
from integrations.tasks.claims import exclusive_claim

log = logging.getLogger(__name__)
ACTOR = "veritrace-retention"
KIND = "retention.purged"
LOCK_KEY = "retention:purge"
FINISHED = ("completed", "failed")
SR_FINISHED = ("sent", "failed")
TOMBSTONE_KEY = "retention_purged_at"
_STUDY_BATCH = 200
_TRACE_BATCH = 100


class RetentionReport(BaseModel):
    """What one run removed (a dry run: would remove). `bytes_freed` is on disk; dry, the index sizes."""

    dry_run: bool
    skipped: bool = False
    spool_days: int | None = None
    trace_days: int | None = None
    studies: int = 0
    instances: int = 0
    sr_exports: int = 0
    files_deleted: int = 0
    files_missing: int = 0
    bytes_freed: int = 0
    traces: int = 0

    def ledger_payload(self) -> dict[str, Any]:
        return self.model_dump(exclude={"dry_run", "skipped"})


def _live(column: Any) -> ColumnElement[bool]:
    return column.not_like(PURGED_PREFIX + "%")


def _finished_at() -> Any:
    return func.coalesce(Analysis.completed_at, Analysis.started_at, Analysis.queued_at)


def _study_done(cutoff: datetime) -> ColumnElement[bool]:
    """Correlated on Study: finished, nothing pending, and quiet since before `cutoff`."""
    analyses = select(Analysis.id).where(Analysis.study_id == Study.id)
    pending_sr = (
        select(SrExport.id)
        .join(Analysis, Analysis.id == SrExport.analysis_id)
        .where(Analysis.study_id == Study.id, SrExport.state.not_in(SR_FINISHED))
    )
    return and_(
        Study.last_received_at < cutoff,
        or_(and_(Study.state == STUDY_STABLE, exists(analyses)), Study.state == STUDY_IGNORED),
        ~exists(analyses.where(Analysis.status.not_in(FINISHED))),
        ~exists(analyses.where(_finished_at() >= cutoff)),
        ~exists(pending_sr),
    )


def _study_analysis_ids(study_id: int) -> Any:
    return select(Analysis.id).where(Analysis.study_id == study_id).scalar_subquery()


def _candidate_studies(engine: Engine, cutoff: datetime) -> Iterator[int]:
    """Ids of studies with files left to purge, in id order, a batch at a time."""
    live_instances = select(Instance.id).where(Instance.study_id == Study.id, _live(Instance.spool_path))
    live_exports = (
        select(SrExport.id)
        .join(Analysis, Analysis.id == SrExport.analysis_id)
        .where(Analysis.study_id == Study.id, _live(SrExport.spool_path))
    )
    after = 0
    while True:
        with Session(engine) as session:
            batch = list(
                session.execute(
                    select(Study.id)
                    .where(
                        Study.id > after,
                        _study_done(cutoff),
                        or_(exists(live_instances), exists(live_exports)),
                    )
                    .order_by(Study.id)
                    .limit(_STUDY_BATCH)
                ).scalars()
            )
        yield from batch
        if len(batch) < _STUDY_BATCH:
            return
        after = batch[-1]


def _purge_study(
    engine: Engine, spool: Spool, study_id: int, cutoff: datetime, report: RetentionReport
) -> None:
    still_done = exists(select(Study.id).where(Study.id == study_id, _study_done(cutoff)))
    with Session(engine) as session, session.begin():
        instance_paths = list(
            session.execute(
                update(Instance)
                .where(Instance.study_id == study_id, _live(Instance.spool_path), still_done)
                .values(spool_path=PURGED_PREFIX + Instance.spool_path)
                .returning(Instance.spool_path)
                .execution_options(synchronize_session=False)
            ).scalars()
        )
        export_paths = list(
            session.execute(
                update(SrExport)
                .where(
                    SrExport.analysis_id.in_(_study_analysis_ids(study_id)),
                    SrExport.state.in_(SR_FINISHED),
                    _live(SrExport.spool_path),
                    still_done,
                )
                .values(spool_path=PURGED_PREFIX + SrExport.spool_path)
                .returning(SrExport.spool_path)
                .execution_options(synchronize_session=False)
            ).scalars()
        )
        if not instance_paths and not export_paths:
            return  # no longer eligible (an instance arrived, an analysis was requeued)
        # A path is content-addressed: the same bytes are the same SOP instance of this very study, so no
        # row of another study can point at a file deleted here.
        for marked in dict.fromkeys([*instance_paths, *export_paths]):
            freed = spool.remove(marked)
            if freed is None:
                report.files_missing += 1
            else:
                report.files_deleted += 1
                report.bytes_freed += freed
    report.studies += 1
    report.instances += len(instance_paths)
    report.sr_exports += len(export_paths)


def _count_study(engine: Engine, study_id: int, report: RetentionReport) -> None:
    with Session(engine) as session:
        count, size = session.execute(
            select(func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0)).where(
                Instance.study_id == study_id, _live(Instance.spool_path)
            )
        ).one()
        exports = session.scalar(
            select(func.count(SrExport.id)).where(
                SrExport.analysis_id.in_(_study_analysis_ids(study_id)),
                SrExport.state.in_(SR_FINISHED),
                _live(SrExport.spool_path),
            )
        )
    report.studies += 1
    report.instances += int(count)
    report.sr_exports += int(exports or 0)
    report.bytes_freed += int(size)


def _purge_traces(engine: Engine, days: int, now: datetime, *, dry_run: bool) -> int:
    cutoff = now - timedelta(days=days)
    expired = and_(
        Analysis.status.in_(FINISHED),
        _finished_at() < cutoff,
        Analysis.trace.is_not(None),
        Analysis.trace[TOMBSTONE_KEY].as_string().is_(None),
    )
    purged, after = 0, ""
    while True:
        with Session(engine) as session, session.begin():
            rows = session.execute(
                select(Analysis.id, Analysis.trace)
                .where(Analysis.id > after, expired)
                .order_by(Analysis.id)
                .limit(_TRACE_BATCH)
            ).all()
            for analysis_id, trace in rows:
                if not trace:
                    continue  # a JSON null: nothing stored
                purged += 1
                if dry_run:
                    continue
                tombstone = {
                    TOMBSTONE_KEY: now.isoformat(),
                    "retention_days": days,
                    "trace_sha256": hashlib.sha256(canonical_json(trace).encode()).hexdigest(),
                }
                session.execute(
                    update(Analysis)
                    .where(Analysis.id == analysis_id, expired)
                    .values(trace=tombstone)
                    .execution_options(synchronize_session=False)
                )
        if len(rows) < _TRACE_BATCH:
            return purged
        after = rows[-1][0]


def run_retention(
    engine: Engine,
    spool: Spool,
    ledger: AuditLedger,
    config: RetentionConfig,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> RetentionReport:
    """One purge (or, dry, one count) under `config`; a no-op report when retention is off."""
    now = now or datetime.now(UTC)
    report = RetentionReport(dry_run=dry_run, spool_days=config.spool_days, trace_days=config.trace_days)
    if not config.enabled:
        return report
    with exclusive_claim(engine, LOCK_KEY) as held:
        if not held:
            log.info("another retention run is in progress; skipping this one")
            return report.model_copy(update={"skipped": True})
        if config.spool_days is not None:
            cutoff = now - timedelta(days=config.spool_days)
            for study_id in _candidate_studies(engine, cutoff):
                if dry_run:
                    _count_study(engine, study_id, report)
                else:
                    _purge_study(engine, spool, study_id, cutoff, report)
        if config.trace_days is not None:
            report.traces = _purge_traces(engine, config.trace_days, now, dry_run=dry_run)
        if not dry_run:
            ledger.append(KIND, ACTOR, report.ledger_payload())
    log.info(
        "retention %s: %d studies, %d instances, %d SR exports, %d files (%d bytes), %d traces",
        "dry run" if dry_run else "run",
        report.studies,
        report.instances,
        report.sr_exports,
        report.files_deleted,
        report.bytes_freed,
        report.traces,
    )
    return report


def run_periodically(
    engine: Engine,
    spool: Spool,
    ledger: AuditLedger,
    config: RetentionConfig,
    stop: threading.Event,
    *,
    first_delay_s: float = 60.0,
) -> None:
    """The dicom process's retention thread: a run shortly after start, then one every `interval_s`."""
    delay = min(first_delay_s, config.interval_s)
    while not stop.wait(delay):
        try:
            run_retention(engine, spool, ledger, config)
        except Exception as exc:  # the next interval tries again; the message may quote row values
            log.error("retention run failed (%s); retrying in %.0f s", type(exc).__name__, config.interval_s)
        delay = config.interval_s

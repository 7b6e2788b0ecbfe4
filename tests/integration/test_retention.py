"""Retention purge on SQLite and PostgreSQL with the real ledger and spool.

A spread of studies is seeded, each in one of the states the purge must tell apart (finished and old,
running, recent, pending SR, ignored by routing, dead-lettered); the files are real spool files. What must
hold: only finished, old studies lose their files; rows stay and are marked; the ledger gets exactly one
count-only entry per run and still verifies; a dry run changes nothing at all; the CLI and the periodic
thread drive the same code.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from dicom_support import DicomStore, dicom_store_for  # type: ignore[import-not-found]
from sqlalchemy import select
from typer.testing import CliRunner

from audit.tables import checkpoints, entries, nodes, payloads
from cds.cli import app as cli_app
from integrations.dicom.spool import PURGED_PREFIX, Spool, SpoolObjectPurged
from integrations.ops.retention import KIND, TOMBSTONE_KEY, run_periodically, run_retention
from integrations.ops.retention_config import RetentionConfig
from integrations.store.ingest import STUDY_IGNORED, STUDY_RECEIVING, STUDY_STABLE
from integrations.store.models import Analysis, AnalysisInstance, Instance, SrExport, Study

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=5)
CONFIG = RetentionConfig(spool_days=30, trace_days=30)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DicomStore]:
    yield from dicom_store_for(request.param, tmp_path, "vt_retention")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", fsync=False)


def seed_study(
    store: DicomStore,
    spool: Spool,
    name: str,
    *,
    state: str = STUDY_STABLE,
    received: datetime = OLD,
    analysis: str | None = "completed",
    finished: datetime | None = None,
    sr_state: str | None = None,
    instances: int = 2,
) -> int:
    """One study with real spool files, an analysis (with a trace) and optionally an SR export."""
    with store.sessions() as session, session.begin():
        study = Study(
            study_uid=f"1.2.826.0.1.{int(hashlib.sha256(name.encode()).hexdigest()[:12], 16)}",
            patient_id=f"PAT-{name}",
            state=state,
            first_received_at=received,
            last_received_at=received,
            instance_count=instances,
        )
        session.add(study)
        session.flush()
        rows = []
        for n in range(instances):
            spooled = spool.write_stream([f"{name}-{n}".encode() * 100])
            rows.append(
                Instance(
                    study_id=study.id,
                    series_uid=f"{study.study_uid}.1",
                    sop_instance_uid=f"{study.study_uid}.1.{n}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    spool_path=spooled.relative_path,
                    size_bytes=spooled.size_bytes,
                    sha256=spooled.sha256,
                    received_at=received,
                )
            )
        session.add_all(rows)
        session.flush()
        if analysis is not None:
            done = finished or received + timedelta(minutes=5)
            row = Analysis(
                study_id=study.id,
                content_digest=name.ljust(64, "0"),
                status=analysis,
                queued_at=received,
                started_at=received,
                completed_at=done if analysis == "completed" else None,
                trace={"version": 1, "steps": [{"kind": "tool_call", "detail": {"patient": f"PAT-{name}"}}]},
            )
            session.add(row)
            session.flush()
            session.add_all(AnalysisInstance(analysis_id=row.id, instance_id=i.id) for i in rows)
            if sr_state is not None:
                sr = spool.write_stream([f"{name}-sr".encode()])
                session.add(
                    SrExport(
                        analysis_id=row.id,
                        destination="PACS@127.0.0.1:104",
                        sop_instance_uid=f"{study.study_uid}.9",
                        spool_path=sr.relative_path,
                        state=sr_state,
                    )
                )
        return study.id


def seed_all(store: DicomStore, spool: Spool) -> dict[str, int]:
    return {
        "done": seed_study(store, spool, "done", sr_state="sent"),
        "dead_lettered": seed_study(store, spool, "dead", analysis="failed"),
        "ignored": seed_study(store, spool, "ignored", state=STUDY_IGNORED, analysis=None),
        "running": seed_study(store, spool, "running", analysis="running"),
        "queued": seed_study(store, spool, "queued", analysis="queued"),
        "recent": seed_study(store, spool, "recent", received=RECENT),
        "recently_analysed": seed_study(store, spool, "reanalysed", finished=RECENT),
        "sr_pending": seed_study(store, spool, "srpending", sr_state="pending"),
        "receiving": seed_study(store, spool, "receiving", state=STUDY_RECEIVING),
    }


def paths_of(store: DicomStore, study_id: int) -> list[str]:
    with store.sessions() as session:
        instances = session.execute(
            select(Instance.spool_path).where(Instance.study_id == study_id)
        ).scalars()
        exports = session.execute(
            select(SrExport.spool_path)
            .join(Analysis, Analysis.id == SrExport.analysis_id)
            .where(Analysis.study_id == study_id)
        ).scalars()
        return [*instances, *exports]


def audit_counts(store: DicomStore) -> dict[str, int]:
    with store.engine.connect() as connection:
        return {
            table.name: int(connection.execute(select(sa.func.count()).select_from(table)).scalar_one())
            for table in (entries, nodes, payloads, checkpoints)
        }


def snapshot(store: DicomStore, spool: Spool) -> tuple[object, ...]:
    with store.sessions() as session:
        rows = session.execute(select(Instance.id, Instance.spool_path).order_by(Instance.id)).all()
        traces = session.execute(select(Analysis.id, Analysis.trace).order_by(Analysis.id)).all()
        exports = session.execute(select(SrExport.id, SrExport.spool_path).order_by(SrExport.id)).all()
    files = sorted(p.relative_to(spool.root).as_posix() for p in spool.objects_dir.rglob("*.dcm"))
    return rows, traces, exports, files, audit_counts(store)


def test_purge_takes_only_finished_old_studies_and_leaves_the_ledger_verifiable(
    store: DicomStore, spool: Spool
) -> None:
    studies = seed_all(store, spool)
    store.ledger.append("test.before", "pytest", {"n": 1})
    kept = {name: paths_of(store, sid) for name, sid in studies.items()}
    before = audit_counts(store)

    report = run_retention(store.engine, spool, store.ledger, CONFIG, now=NOW)

    purged = {"done", "dead_lettered", "ignored"}
    assert (report.studies, report.instances, report.sr_exports) == (3, 6, 1)
    assert (report.files_deleted, report.files_missing) == (7, 0) and report.bytes_freed > 0
    for name, study_id in studies.items():
        now_paths = paths_of(store, study_id)
        assert len(now_paths) == len(kept[name])  # rows are never deleted
        if name in purged:
            assert now_paths == [PURGED_PREFIX + p for p in kept[name]]
            assert not any(spool.absolute(p).exists() for p in kept[name])
            with pytest.raises(SpoolObjectPurged):
                spool.open_plaintext(now_paths[0])
        else:
            assert now_paths == kept[name] and all(spool.absolute(p).exists() for p in kept[name])
    after = audit_counts(store)
    assert after["audit_entries"] == before["audit_entries"] + 1  # one entry for the run, nothing removed
    assert all(after[table] >= count for table, count in before.items())
    [entry] = store.entries(KIND)
    assert entry.payload == report.ledger_payload() and entry.study_uid is None and entry.patient_ref is None
    assert "PAT-" not in repr(entry.payload) and "1.2.826" not in repr(entry.payload)
    assert store.ledger.verify().ok

    again = run_retention(store.engine, spool, store.ledger, CONFIG, now=NOW)
    assert (again.studies, again.files_deleted, again.traces) == (0, 0, 0)
    assert len(store.entries(KIND)) == 2 and store.ledger.verify().ok


def test_traces_past_their_days_become_tombstones(store: DicomStore, spool: Spool) -> None:
    studies = seed_all(store, spool)
    report = run_retention(store.engine, spool, store.ledger, RetentionConfig(trace_days=30), now=NOW)
    with store.sessions() as session:
        traces = {
            study_id: session.execute(select(Analysis.trace).where(Analysis.study_id == study_id)).scalar()
            for study_id in studies.values()
        }
    tombstoned = {name for name, sid in studies.items() if traces[sid] and TOMBSTONE_KEY in traces[sid]}
    # Finished 40 days ago: completed, failed, the SR-pending and still-receiving ones; not the running or
    # queued ones, and not those finished 5 days ago.
    assert tombstoned == {"done", "dead_lettered", "sr_pending", "receiving"}
    assert report.traces == 4 and report.instances == 0  # spool retention off: no file touched
    tomb = traces[studies["done"]]
    assert set(tomb) == {TOMBSTONE_KEY, "retention_days", "trace_sha256"} and "PAT-" not in repr(tomb)
    assert traces[studies["recent"]]["steps"]  # type: ignore[index]
    assert store.ledger.verify().ok


def test_dry_run_counts_the_same_and_changes_nothing(store: DicomStore, spool: Spool) -> None:
    seed_all(store, spool)
    before = snapshot(store, spool)
    dry = run_retention(store.engine, spool, store.ledger, CONFIG, now=NOW, dry_run=True)
    assert snapshot(store, spool) == before
    real = run_retention(store.engine, spool, store.ledger, CONFIG, now=NOW)
    assert (dry.studies, dry.instances, dry.sr_exports, dry.traces) == (
        real.studies,
        real.instances,
        real.sr_exports,
        real.traces,
    )
    assert dry.dry_run and not real.dry_run


def test_a_file_already_gone_is_counted_and_the_row_still_marked(store: DicomStore, spool: Spool) -> None:
    study_id = seed_study(store, spool, "gone")
    first, second = paths_of(store, study_id)
    spool.absolute(first).unlink()  # e.g. a run that crashed after deleting, before committing
    report = run_retention(store.engine, spool, store.ledger, CONFIG, now=NOW)
    assert (report.files_deleted, report.files_missing) == (1, 1)
    assert paths_of(store, study_id) == [PURGED_PREFIX + first, PURGED_PREFIX + second]


def test_cli_runs_the_purge_and_the_periodic_thread_runs_it_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: DicomStore, spool: Spool
) -> None:
    study_id = seed_study(store, spool, "cli", received=datetime.now(UTC) - timedelta(days=400))
    monkeypatch.setenv("VERITRACE_HOME", str(tmp_path))
    monkeypatch.setenv("VERITRACE_DATABASE_URL", store.engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("VERITRACE_SPOOL_DIR", str(spool.root))
    runner = CliRunner()
    off = runner.invoke(cli_app, ["retention", "run"])
    assert off.exit_code == 1 and "retention is off" in off.output
    monkeypatch.setenv("VERITRACE_RETENTION_SPOOL_DAYS", "365")
    dry = runner.invoke(cli_app, ["retention", "run", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would purge: 2 instance files and 0 SR files of 1 studies" in dry.output
    assert not any(p.startswith(PURGED_PREFIX) for p in paths_of(store, study_id))

    stop = threading.Event()
    config = RetentionConfig(spool_days=365, interval_s=3600)
    thread = threading.Thread(
        target=run_periodically,
        args=(store.engine, spool, store.ledger, config, stop),
        kwargs={"first_delay_s": 0.01},
    )
    thread.start()
    try:
        for _ in range(500):  # wait for the first run (not a timing assertion: the loop only bounds it)
            if store.entries(KIND):
                break
            stop.wait(0.02)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    [entry] = store.entries(KIND)
    assert entry.payload["instances"] == 2 and entry.payload["spool_days"] == 365
    assert all(p.startswith(PURGED_PREFIX) for p in paths_of(store, study_id))


def test_a_resend_of_purged_bytes_brings_the_row_back_to_its_file(store: DicomStore, spool: Spool) -> None:
    from integrations.store.ingest import IngestOutcome, InstanceFacts, record_instance

    study_id = seed_study(store, spool, "resent")
    run_retention(store.engine, spool, store.ledger, CONFIG, now=NOW)
    with store.sessions() as session:
        row = session.execute(select(Instance).where(Instance.study_id == study_id).limit(1)).scalar_one()
        study = session.get(Study, study_id)
        assert study is not None and row.spool_path.startswith(PURGED_PREFIX)
    respooled = spool.write_stream([b"resent-0" * 100])  # the same bytes as the purged instance 0
    assert respooled.sha256 == row.sha256
    facts = InstanceFacts(
        study_uid=study.study_uid,
        series_uid=row.series_uid,
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        transfer_syntax_uid=row.transfer_syntax_uid,
        modality=None,
        body_part=None,
        patient_id=None,
        accession_number=None,
        spool_path=respooled.relative_path,
        sha256=respooled.sha256,
        size_bytes=respooled.size_bytes,
    )
    with store.sessions() as session, session.begin():
        recorded = record_instance(session, facts, calling_ae="PACS", now=NOW)
    assert recorded.outcome is IngestOutcome.STORED and recorded.instance_id == row.id
    with store.sessions() as session:
        restored = session.get(Instance, row.id)
        assert restored is not None and restored.spool_path == respooled.relative_path
    assert spool.open_plaintext(respooled.relative_path).read() == b"resent-0" * 100
    # A second resend of the same bytes is an ordinary duplicate again.
    with store.sessions() as session, session.begin():
        again = record_instance(session, facts, calling_ae="PACS", now=NOW)
    assert again.outcome is IngestOutcome.DUPLICATE

"""Stable-study assembly against a real SQLite database and PostgreSQL (marked), with the real ledger."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dicom_support import DicomStore, dicom_store_for  # type: ignore[import-not-found]
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from audit import Ledger
from integrations.dicom.config import RoutingRules
from integrations.dicom.spool import Spool
from integrations.dicom.stability import StableStudyTracker, content_digest
from integrations.dicom.study_files import UnknownAnalysis, study_instance_files
from integrations.store.ingest import IngestOutcome, InstanceFacts, record_instance
from integrations.store.models import Analysis, Study

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DicomStore]:
    yield from dicom_store_for(request.param, tmp_path, "vt_dicom")


@pytest.fixture
def sessions(store: DicomStore) -> sessionmaker[Session]:
    return store.sessions


@pytest.fixture
def ledger(store: DicomStore) -> Ledger:
    return store.ledger


def kinds(store: DicomStore) -> list[str]:
    return [entry.kind for entry in store.entries()]


def facts(
    study_uid: str,
    n: int,
    *,
    sha: str | None = None,
    modality: str = "CT",
    sop_class: str = "1.2.840.10008.5.1.4.1.1.2",
) -> InstanceFacts:
    digest = sha or f"{n:064x}"
    return InstanceFacts(
        study_uid=study_uid,
        series_uid=f"{study_uid}.1",
        sop_instance_uid=f"{study_uid}.1.{n}",
        sop_class_uid=sop_class,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality=modality,
        body_part="CHEST",
        patient_id="SYN-1",
        accession_number=None,
        spool_path=f"objects/{digest[:2]}/{digest[2:4]}/{digest}.dcm",
        sha256=digest,
        size_bytes=10,
    )


def ingest(
    sessions: sessionmaker[Session], item: InstanceFacts, at: datetime, ae: str = "PACS"
) -> IngestOutcome:
    with sessions() as session, session.begin():
        return record_instance(session, item, calling_ae=ae, now=at).outcome


def make_tracker(
    sessions: sessionmaker[Session], ledger: Ledger, queued: list[str], **kwargs: Any
) -> StableStudyTracker:
    return StableStudyTracker(sessions, ledger, 5.0, queued.append, **kwargs)


def test_quiet_study_becomes_one_queued_analysis_committed_before_enqueue(
    sessions: sessionmaker[Session], store: DicomStore, tmp_path: Path
) -> None:
    ledger, queued = store.ledger, []
    seen_in_db: list[str] = []

    def enqueue(analysis_id: str) -> None:
        with sessions() as other:  # a different session: proves the row was committed first
            seen_in_db.append(other.get(Analysis, analysis_id).status)  # type: ignore[union-attr]
        queued.append(analysis_id)

    tracker = StableStudyTracker(sessions, ledger, 5.0, enqueue)
    for n in range(3):
        ingest(sessions, facts("1.9.1", n), T0 + timedelta(seconds=n))
    assert tracker.poll_once(T0 + timedelta(seconds=6)) == []  # last instance 4 s ago
    ids = tracker.poll_once(T0 + timedelta(seconds=7.5))
    assert ids == queued and len(ids) == 1 and seen_in_db == ["queued"]
    assert tracker.poll_once(T0 + timedelta(seconds=60)) == []  # queued once
    with sessions() as session:
        analysis = session.get(Analysis, ids[0])
        assert analysis is not None and analysis.version == 1
        assert analysis.content_digest == content_digest(f"{n:064x}" for n in range(3))
        spool = Spool(tmp_path / "spool")
        paths = study_instance_files(session, ids[0], spool)
        assert [p.name for p in paths] == [f"{n:064x}.dcm" for n in range(3)]
        assert all(p.spool is spool for p in paths)
    assert kinds(store) == ["study.stable", "analysis.queued"]


def test_late_instance_makes_a_new_version_and_old_analysis_keeps_its_content(
    sessions: sessionmaker[Session], store: DicomStore, tmp_path: Path
) -> None:
    ledger, queued = store.ledger, []
    tracker = make_tracker(sessions, ledger, queued)
    ingest(sessions, facts("1.9.2", 0), T0)
    [first] = tracker.poll_once(T0 + timedelta(seconds=10))
    ingest(sessions, facts("1.9.2", 1), T0 + timedelta(seconds=20))
    [second] = tracker.poll_once(T0 + timedelta(seconds=30))
    with sessions() as session:
        assert session.get(Analysis, second).version == 2  # type: ignore[union-attr]
        spool = Spool(tmp_path / "spool")
        assert len(study_instance_files(session, first, spool)) == 1
        assert len(study_instance_files(session, second, spool)) == 2


def test_duplicate_resend_changes_nothing_and_same_content_is_never_queued_twice(
    sessions: sessionmaker[Session], store: DicomStore
) -> None:
    ledger, queued = store.ledger, []
    tracker = make_tracker(sessions, ledger, queued)
    ingest(sessions, facts("1.9.3", 0), T0)
    assert len(tracker.poll_once(T0 + timedelta(seconds=10))) == 1
    assert ingest(sessions, facts("1.9.3", 0), T0 + timedelta(seconds=20)) is IngestOutcome.DUPLICATE
    assert tracker.poll_once(T0 + timedelta(seconds=40)) == []
    # An excluded object (our own SR coming back) reopens the study but the routed content is unchanged.
    sr = facts("1.9.3", 7, modality="SR", sop_class="1.2.840.10008.5.1.4.1.1.88.33")
    assert ingest(sessions, sr, T0 + timedelta(seconds=50)) is IngestOutcome.STORED
    assert tracker.poll_once(T0 + timedelta(seconds=70)) == []
    with sessions() as session:
        assert session.execute(select(Study.state).where(Study.study_uid == "1.9.3")).scalar_one() == "stable"
        assert len(session.execute(select(Analysis.id)).all()) == 1


def test_conflicting_bytes_keep_both_versions_flagged(
    sessions: sessionmaker[Session], store: DicomStore
) -> None:
    assert ingest(sessions, facts("1.9.4", 0, sha="a" * 64), T0) is IngestOutcome.STORED
    assert ingest(sessions, facts("1.9.4", 0, sha="b" * 64), T0) is IngestOutcome.CONFLICT
    with sessions() as session:
        rows = session.execute(text("SELECT sha256, conflict FROM instances ORDER BY sha256")).all()
        assert [(r[0][0], bool(r[1])) for r in rows] == [("a", True), ("b", True)]
        assert session.execute(select(Study.instance_count)).scalar_one() == 2


def test_routing_ignores_studies_with_nothing_to_analyse(
    sessions: sessionmaker[Session], store: DicomStore
) -> None:
    ledger, queued = store.ledger, []
    tracker = make_tracker(sessions, ledger, queued, routing=RoutingRules(modalities=["CR", "DX"]))
    ingest(sessions, facts("1.9.5", 0, modality="CT"), T0)
    assert tracker.poll_once(T0 + timedelta(seconds=10)) == []
    with sessions() as session:
        assert session.execute(select(Study.state)).scalar_one() == "ignored"
    assert store.entries("study.stable")[0].payload["state"] == "ignored"


def test_stable_age_per_calling_ae(sessions: sessionmaker[Session], store: DicomStore) -> None:
    ledger, queued = store.ledger, []
    tracker = make_tracker(sessions, ledger, queued, stable_age_by_calling_aet={"SLOWCT": 60.0, "FAST": 1.0})
    ingest(sessions, facts("1.9.6", 0), T0, ae="SLOWCT")
    ingest(sessions, facts("1.9.7", 0), T0, ae="FAST")
    ingest(sessions, facts("1.9.8", 0), T0, ae="OTHER")
    assert len(tracker.poll_once(T0 + timedelta(seconds=2))) == 1  # FAST only
    assert len(tracker.poll_once(T0 + timedelta(seconds=10))) == 1  # OTHER (default 5 s)
    assert len(tracker.poll_once(T0 + timedelta(seconds=61))) == 1  # SLOWCT


def test_failed_enqueue_stays_queued_and_requeue_pending_sends_it_after_restart(
    sessions: sessionmaker[Session], store: DicomStore
) -> None:
    ledger = store.ledger

    def broken(_: str) -> None:
        raise ConnectionError("broker down")

    ingest(sessions, facts("1.9.9", 0), T0)
    [analysis_id] = StableStudyTracker(sessions, ledger, 5.0, broken).poll_once(T0 + timedelta(seconds=9))
    queued: list[str] = []
    restarted = make_tracker(sessions, ledger, queued)
    assert restarted.requeue_pending() == [analysis_id] == queued
    assert restarted.poll_once(T0 + timedelta(seconds=99)) == []


def test_unknown_analysis_is_an_error(
    sessions: sessionmaker[Session], store: DicomStore, tmp_path: Path
) -> None:
    with sessions() as session, pytest.raises(UnknownAnalysis):
        study_instance_files(session, "nope", Spool(tmp_path / "spool"))


def test_negative_stable_age_is_rejected(sessions: sessionmaker[Session], store: DicomStore) -> None:
    with pytest.raises(ValueError, match="stable_age_s"):
        StableStudyTracker(sessions, store.ledger, -1, print)


def test_a_study_with_acknowledged_but_uncommitted_instances_is_not_settled(
    sessions: sessionmaker[Session], store: DicomStore
) -> None:
    """The SCP acknowledges before the index commit; while its indexer holds rows of a study (a database
    outage can make that longer than the quiet period), the tracker leaves the study receiving."""
    held: set[str] = {"1.9.7"}
    queued: list[str] = []
    tracker = make_tracker(sessions, store.ledger, queued, held_studies=lambda: frozenset(held))
    ingest(sessions, facts("1.9.7", 0), T0)
    ingest(sessions, facts("1.9.8", 0), T0)
    assert len(tracker.poll_once(T0 + timedelta(seconds=60))) == 1  # only the study not held
    held.clear()  # the indexer committed the rest
    assert len(tracker.poll_once(T0 + timedelta(seconds=60))) == 1
    with sessions() as session:
        assert set(session.scalars(select(Study.state))) == {"stable"}

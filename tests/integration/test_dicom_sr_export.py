"""Draft SR back to a PACS: build with highdicom, send by C-STORE to a real SCP, retry, give up, audit."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dicom_support import DicomStore, make_dicom_store  # type: ignore[import-not-found]
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from integrations.dicom.config import DicomConfig, SrDestination
from integrations.dicom.scp import StorageScp
from integrations.dicom.spool import Spool, StoredObject
from integrations.dicom.sr_export import build_draft_sr, load_evidence
from integrations.dicom.sr_sender import NO_STATUS, SrExporter, Verdict, classify
from integrations.dicom.stability import StableStudyTracker
from integrations.dicom.study_files import study_instance_files
from integrations.dicom.synthetic import make_image
from integrations.store.models import Instance, SrExport
from model.report import DraftReport, Statement


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DicomStore]:
    made = make_dicom_store(tmp_path)
    yield made
    made.engine.dispose()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def received_study(tmp_path: Path, store: DicomStore) -> tuple[StorageScp, str, list[StoredObject]]:
    """A running SCP ('the PACS' and our gateway at once) holding a 2-image study with a queued analysis."""
    scp = StorageScp(
        DicomConfig(spool_dir=tmp_path / "spool", port=0, min_free_bytes=0, fsync=False),
        store.sessions,
        store.ledger,
    )
    scp.start()
    study = generate_uid()
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ae = AE("PACS")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="VERITRACE")
    for i in range(2):
        assert assoc.send_c_store(make_image(study_uid=study, seed=i)).Status == 0
    assoc.release()
    assert scp.indexer.wait_idle(30)  # acknowledged is not yet indexed: the rows follow on the indexer
    tracker = StableStudyTracker(store.sessions, store.ledger, 0.0, lambda _id: None)
    [analysis_id] = tracker.poll_once(datetime.now(UTC) + timedelta(seconds=1))
    with store.sessions() as session:
        paths = study_instance_files(session, analysis_id, scp.spool)
    return scp, analysis_id, paths


def draft_for(paths: list[StoredObject]) -> tuple[DraftReport, list]:
    evidence = load_evidence(paths)
    cited = f"img:{evidence[0].SOPInstanceUID}:0"
    report = DraftReport(
        findings=[
            Statement(
                text="8 mm nodule, right lower lobe", citations=[cited, "fhir:Observation/1/_history/2"]
            )
        ],
        impression=[Statement(text="Follow-up CT in 6-12 months")],
        untrained_model=True,
    )
    return report, evidence


def test_sr_round_trip_to_a_real_scp(tmp_path: Path, store: DicomStore) -> None:
    scp, analysis_id, paths = received_study(tmp_path, store)
    try:
        report, evidence = draft_for(paths)
        sr = build_draft_sr(report, evidence)
        destination = SrDestination(ae_title="VERITRACE", host="127.0.0.1", port=scp.port)
        exporter = SrExporter(store.sessions, scp.spool, store.ledger, destination, calling_ae="VTEXPORT")
        export_id = exporter.queue(analysis_id, sr)
        assert exporter.queue(analysis_id, sr) == export_id  # idempotent
        [outcome] = exporter.send_due()
        assert outcome.verdict is Verdict.SENT and outcome.status == 0
        assert exporter.send_due() == []  # nothing pending any more
    finally:
        scp.stop()
    with store.sessions() as session:
        row = session.execute(
            select(Instance).where(Instance.sop_instance_uid == sr.SOPInstanceUID)
        ).scalar_one()
        arrived = dcmread(scp.spool.absolute(row.spool_path))
    assert (arrived.PreliminaryFlag, arrived.CompletionFlag, arrived.VerificationFlag) == (
        "PRELIMINARY",
        "PARTIAL",
        "UNVERIFIED",
    )
    assert arrived.StudyInstanceUID == evidence[0].StudyInstanceUID
    finding = next(i for i in arrived.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121071")
    image_ref = finding.ContentSequence[0].ReferencedSOPSequence[0]
    assert image_ref.ReferencedSOPInstanceUID == evidence[0].SOPInstanceUID
    [entry] = store.entries("sr.exported")
    assert entry.payload["analysis_id"] == analysis_id and entry.payload["attempts"] == 1


def test_unreachable_pacs_backs_off_then_fails_permanently(tmp_path: Path, store: DicomStore) -> None:
    scp, analysis_id, paths = received_study(tmp_path, store)
    scp.stop()
    report, evidence = draft_for(paths)
    destination = SrDestination(
        ae_title="PACS", host="127.0.0.1", port=closed_port(), max_attempts=3, backoff_base_s=10, timeout_s=2
    )
    exporter = SrExporter(store.sessions, Spool(tmp_path / "spool"), store.ledger, destination)
    exporter.queue(analysis_id, build_draft_sr(report, evidence))
    t0 = datetime.now(UTC)
    [first] = exporter.send_due(t0)
    assert first.verdict is Verdict.RETRY and first.status == NO_STATUS
    assert exporter.send_due(t0 + timedelta(seconds=5)) == []  # backoff: not due yet
    [second] = exporter.send_due(t0 + timedelta(seconds=11))
    assert second.verdict is Verdict.RETRY
    assert exporter.send_due(t0 + timedelta(seconds=25)) == []  # 20 s after the 2nd failure
    [third] = exporter.send_due(t0 + timedelta(seconds=32))
    assert third.verdict is Verdict.FAILED and third.attempts == 3
    assert exporter.send_due(t0 + timedelta(days=1)) == []  # never retried again
    with store.sessions() as session:
        export = session.execute(select(SrExport)).scalar_one()
        assert (export.state, export.last_error) == ("failed", "no response")
    assert len(store.entries("sr.export_failed")) == 1


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (0x0000, Verdict.SENT),
        (0xB000, Verdict.SENT),
        (0xA700, Verdict.RETRY),
        (NO_STATUS, Verdict.RETRY),
        (0xA900, Verdict.FAILED),
        (0xC000, Verdict.FAILED),
        (0x0122, Verdict.FAILED),
    ],
)
def test_status_classification(status: int, verdict: Verdict) -> None:
    assert classify(status) is verdict


def test_citing_an_image_outside_the_evidence_is_an_error(tmp_path: Path) -> None:
    evidence = [make_image(study_uid=generate_uid())]
    report = DraftReport(findings=[Statement(text="x", citations=["img:1.2.3:0"])], untrained_model=False)
    with pytest.raises(ValueError, match="not among the SR's evidence"):
        build_draft_sr(report, evidence)

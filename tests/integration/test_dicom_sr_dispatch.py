"""export_draft_sr: a stored draft report goes back to a real SCP as an SR, once, with retries and an end.

The "PACS" is our own Storage SCP on a real socket (the Orthanc end-to-end test covers a foreign PACS);
the database and ledger are real SQLite. The runtime is a plain dataclass holding the same objects the
worker's runtime holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dicom_support import DicomStore, make_dicom_store  # type: ignore[import-not-found]
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit import Ledger
from integrations.dicom.config import DicomConfig, SrDestination
from integrations.dicom.scp import StorageScp
from integrations.dicom.spool import Spool
from integrations.dicom.sr_dispatch import DispatchState, export_draft_sr, sr_uid_for
from integrations.dicom.stability import StableStudyTracker
from integrations.dicom.synthetic import SR_COMPREHENSIVE_STORAGE, make_image
from integrations.store.models import Instance, Report, SrExport
from tests.conftest import free_port


@dataclass
class Runtime:
    session_factory: Callable[[], Session]
    ledger: Ledger
    spool_dir: Path
    sr_destination: SrDestination | None
    dicom_ae_title: str = "VERITRACE"

    def spool(self) -> Spool:
        return Spool(self.spool_dir)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DicomStore]:
    made = make_dicom_store(tmp_path)
    yield made
    made.engine.dispose()


@pytest.fixture
def pacs(tmp_path: Path, store: DicomStore) -> Iterator[StorageScp]:
    """A second SCP with its own spool and database playing the PACS that receives the SR."""
    (tmp_path / "pacs").mkdir()
    pacs_store = make_dicom_store(tmp_path / "pacs")
    scp = StorageScp(
        DicomConfig(
            ae_title="PACS", spool_dir=tmp_path / "pacs-spool", port=0, min_free_bytes=0, fsync=False
        ),
        pacs_store.sessions,
        pacs_store.ledger,
    )
    scp.start()
    scp.index = pacs_store  # type: ignore[attr-defined]
    yield scp
    scp.stop()
    pacs_store.engine.dispose()


def stored_report(tmp_path: Path, store: DicomStore, *, cite_image: bool = True) -> str:
    """Receive a 2-image CT study through our SCP, settle it, and store a draft as the pipeline would."""
    gateway = StorageScp(
        DicomConfig(spool_dir=tmp_path / "spool", port=0, min_free_bytes=0, fsync=False),
        store.sessions,
        store.ledger,
    )
    gateway.start()
    try:
        study = "1.2.826.0.1.3680043.8.498.4242"
        ae = AE("MODALITY")
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", gateway.port, ae_title="VERITRACE")
        images = [make_image(study_uid=study, seed=i) for i in range(2)]
        for image in images:
            assert assoc.send_c_store(image).Status == 0
        assoc.release()
    finally:
        gateway.stop()
    tracker = StableStudyTracker(store.sessions, store.ledger, 0.0, lambda _id: None)
    [analysis_id] = tracker.poll_once(datetime.now(UTC) + timedelta(seconds=1))
    citation = f"img:{images[1].SOPInstanceUID}:0" if cite_image else "img:1.2.3.4:0"
    body = {
        "findings": [{"text": "No acute finding", "citations": [citation]}],
        "impression": [{"text": "Normal study", "citations": []}],
        "untrained_model": True,
        "rejected": [],
    }
    with store.sessions() as session, session.begin():
        report = Report(
            analysis_id=analysis_id,
            study_uid=study,
            summary="AI draft",
            body=body,
            markdown="",
            untrained_model=True,
        )
        session.add(report)
        session.flush()
        return report.id


def received_by(pacs: StorageScp) -> list[Instance]:
    # Acknowledged is not yet indexed: the rows follow on the PACS's indexer thread.
    assert pacs.indexer.wait_idle(30)
    with pacs.index.sessions() as session:  # type: ignore[attr-defined]
        return list(session.execute(select(Instance)).scalars())


def test_sends_the_draft_once_as_a_preliminary_sr(
    tmp_path: Path, store: DicomStore, pacs: StorageScp
) -> None:
    report_id = stored_report(tmp_path, store)
    destination = SrDestination(ae_title="PACS", host="127.0.0.1", port=pacs.port)
    runtime = Runtime(store.sessions, store.ledger, tmp_path / "spool", destination)

    first = export_draft_sr(runtime, report_id)
    again = export_draft_sr(runtime, report_id)

    assert (first.state, first.status, first.attempts) == (DispatchState.SENT, 0, 1)
    assert (again.state, again.export_id, again.attempts) == (DispatchState.SENT, first.export_id, 1)
    [arrived] = received_by(pacs)
    assert arrived.sop_class_uid == SR_COMPREHENSIVE_STORAGE
    assert arrived.sop_instance_uid == sr_uid_for(report_id)
    sr = dcmread(pacs.spool.absolute(arrived.spool_path))
    assert (sr.PreliminaryFlag, sr.CompletionFlag, sr.VerificationFlag) == (
        "PRELIMINARY",
        "PARTIAL",
        "UNVERIFIED",
    )
    assert sr.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.4242"
    finding = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121071")
    assert finding.TextValue == "No acute finding"
    with store.sessions() as session:
        cited = session.execute(select(Instance.sop_instance_uid).order_by(Instance.id)).scalars().all()[1]
    assert finding.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == cited
    [entry] = store.entries("sr.exported")
    assert entry.payload["destination"] == destination.label


def test_pacs_down_is_retried_with_backoff_then_fails_for_good(tmp_path: Path, store: DicomStore) -> None:
    report_id = stored_report(tmp_path, store)
    destination = SrDestination(
        ae_title="PACS", host="127.0.0.1", port=free_port(), max_attempts=2, backoff_base_s=30, timeout_s=2
    )
    runtime = Runtime(store.sessions, store.ledger, tmp_path / "spool", destination)
    t0 = datetime.now(UTC)

    first = export_draft_sr(runtime, report_id, now=t0)
    early = export_draft_sr(runtime, report_id, now=t0 + timedelta(seconds=10))
    last = export_draft_sr(runtime, report_id, now=t0 + timedelta(seconds=31))
    after = export_draft_sr(runtime, report_id, now=t0 + timedelta(days=1))

    assert (first.state, first.attempts, first.retry_in_s) == (DispatchState.PENDING, 1, 30.0)
    assert (early.state, early.attempts, early.retry_in_s) == (DispatchState.PENDING, 1, 20.0)
    assert (last.state, last.attempts) == (DispatchState.FAILED, 2)
    assert (after.state, after.attempts) == (DispatchState.FAILED, 2)  # never attempted again
    with store.sessions() as session:
        [export] = session.execute(select(SrExport)).scalars().all()
    assert (export.state, export.last_error) == ("failed", "no response")
    assert len(store.entries("sr.export_failed")) == 1


def test_a_draft_citing_an_unknown_image_fails_at_once_and_is_audited(
    tmp_path: Path, store: DicomStore
) -> None:
    report_id = stored_report(tmp_path, store, cite_image=False)
    destination = SrDestination(ae_title="PACS", host="127.0.0.1", port=free_port())
    runtime = Runtime(store.sessions, store.ledger, tmp_path / "spool", destination)

    result = export_draft_sr(runtime, report_id)

    assert result.state is DispatchState.FAILED and result.export_id is None
    [entry] = store.entries("sr.export_failed")
    assert entry.payload["reason"] == "SR could not be built (ValueError)"


def test_disabled_and_unknown_report_do_nothing(tmp_path: Path, store: DicomStore) -> None:
    report_id = stored_report(tmp_path, store)
    off = Runtime(store.sessions, store.ledger, tmp_path / "spool", None)
    on = Runtime(
        store.sessions,
        store.ledger,
        tmp_path / "spool",
        SrDestination(ae_title="P", host="127.0.0.1", port=1),
    )

    assert export_draft_sr(off, report_id).state is DispatchState.DISABLED
    assert export_draft_sr(on, "no-such-report").state is DispatchState.NO_REPORT
    with store.sessions() as session:
        assert session.execute(select(SrExport)).first() is None

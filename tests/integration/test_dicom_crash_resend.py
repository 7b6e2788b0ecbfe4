"""Kill the SCP mid-association, restart it, let the PACS resend: no loss, no duplicate.

The SCP is the real `veritrace dicom` process (SQLite index, real ledger, fsync on), killed with SIGKILL
while a large instance is on the wire. What must hold:
- every instance acknowledged with Success before the kill is in the spool when the process is gone, and
  in the index or in the intake journal (Success means durable; the index row follows on the indexer
  thread); the restart replays the journal before it listens, so every one of them is then indexed, once;
- the half-received instance leaves nothing in the index and no stray file once the SCP is back;
- the PACS (dcmtk `storescu`) resending the whole study ends with exactly one index row and one spool file
  per instance, each byte-identical to what was sent, and a ledger receipt for every instance.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from audit import Ledger
from cds.settings import Settings
from integrations.dicom.intake_journal import JOURNAL_DIR, pending_entries
from integrations.dicom.spool import Spool
from integrations.dicom.synthetic import make_image, write_part10
from integrations.store.engine import make_engine, make_session_factory
from integrations.store.models import Instance
from tests.conftest import free_port

STUDY = "1.2.826.0.1.3680043.8.498.777001"
SMALL = 12


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in ("VERITRACE_DATABASE_URL", "VERITRACE_BROKER_URL", "VERITRACE_FHIR_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("VERITRACE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VERITRACE_DICOM_PORT", str(free_port()))
    # Long enough that the study does not settle between the kill and the resend.
    monkeypatch.setenv("VERITRACE_STABLE_AGE", "120")
    upgrade = subprocess.run(
        [sys.executable, "-m", "cds.cli", "db", "upgrade"], capture_output=True, timeout=120
    )
    assert upgrade.returncode == 0, upgrade.stderr.decode()
    return Settings()


def start_scp(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    process = subprocess.Popen([sys.executable, "-m", "cds.cli", "dicom"], stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    ae = AE("PACS")
    ae.add_requested_context(Verification)
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        assoc = ae.associate(settings.dicom_host, settings.dicom_port, ae_title=settings.dicom_ae_title)
        if assoc.is_established:
            assoc.release()
            return process
        time.sleep(0.2)
    process.kill()
    raise AssertionError("the SCP did not come up")


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    """12 small CT slices, then one 32 MB instance (the one on the wire at the kill), then 3 more."""
    folder = tmp_path / "study"
    images = [make_image(study_uid=STUDY, instance_number=i, seed=i) for i in range(SMALL)]
    images.append(make_image(study_uid=STUDY, rows=4096, columns=4096, instance_number=SMALL, seed=SMALL))
    images += [make_image(study_uid=STUDY, instance_number=i, seed=i) for i in range(SMALL + 1, SMALL + 4)]
    return [write_part10(ds, folder / f"{i:03d}.dcm") for i, ds in enumerate(images)]


@pytest.fixture
def scp_log(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "scp.log"


def index_rows(settings: Settings) -> list[Instance]:
    engine = make_engine(settings.store_config())
    try:
        with make_session_factory(engine)() as session:
            return list(session.execute(select(Instance).order_by(Instance.id)).scalars())
    finally:
        engine.dispose()


def largest_part(spool_dir: Path) -> int:
    """The largest temp file being written (under tmp/, or a ready file the SCP took)."""
    sizes = []
    for part in [*spool_dir.glob("tmp/*.part"), *spool_dir.glob("ready/**/*.part")]:
        try:
            sizes.append(part.stat().st_size)
        except FileNotFoundError:  # finished and renamed between listing and stat
            continue
    return max(sizes, default=0)


def dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    group_length = int.from_bytes(data[128 + 4 + 8 : 128 + 4 + 12], "little")
    return data[128 + 4 + 12 + group_length :]


def test_kill_mid_association_then_resend(settings: Settings, study: list[Path], scp_log: Path) -> None:
    scp = start_scp(settings, scp_log)
    acknowledged: list[str] = []
    datasets: list[Dataset] = [dcmread(path) for path in study]
    ae = AE("PACS")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.maximum_pdu_size = 16384  # many PDUs for the big instance, so the kill lands mid-transfer
    assoc = ae.associate(settings.dicom_host, settings.dicom_port, ae_title=settings.dicom_ae_title)
    assert assoc.is_established
    try:
        for ds in datasets[:SMALL]:
            status = assoc.send_c_store(ds)
            assert status.Status == 0x0000
            acknowledged.append(str(ds.SOPInstanceUID))
        big_status: list[Dataset] = []
        big = threading.Thread(
            target=lambda: big_status.append(assoc.send_c_store(datasets[SMALL])), daemon=True
        )
        big.start()
        spool_dir = settings.dicom_config().spool_dir
        deadline = time.monotonic() + 30
        # Kill while the big data set is half written: its temp file exists and is still growing.
        while largest_part(spool_dir) < 1024 * 1024:
            assert time.monotonic() < deadline, "the large instance never started arriving"
            time.sleep(0.005)
        os.kill(scp.pid, signal.SIGKILL)
        scp.wait(timeout=10)
        big.join(timeout=30)
    finally:
        if assoc.is_alive():
            assoc.abort()

    assert big_status and "Status" not in big_status[0]  # the kill landed before its response

    assert largest_part(spool_dir) >= 1024 * 1024  # the kill left the half-written data set behind

    # Success meant durable: everything acknowledged is spooled, and indexed or journaled, with the
    # process gone.
    rows = index_rows(settings)
    assert [row.sop_instance_uid for row in rows] == acknowledged[: len(rows)]
    spool = settings.dicom_config().spool_dir.resolve()
    for row in rows:
        assert (spool / row.spool_path).stat().st_size == row.size_bytes
    indexed_paths = {row.spool_path for row in rows}
    journaled = [
        entry
        for journal in (spool / JOURNAL_DIR).glob("*.jsonl")
        for entry in pending_entries(journal)
        if entry.spool_path not in indexed_paths
    ]
    assert len(rows) + len(journaled) == len(acknowledged)
    for entry in journaled:
        assert (spool / entry.spool_path).stat().st_size == entry.size_bytes
    assert str(datasets[SMALL].SOPInstanceUID) not in {row.sop_instance_uid for row in rows}

    # Restart; the PACS resends the whole study on a new association.
    scp = start_scp(settings, scp_log)
    try:
        # The interrupted write was swept at start (only empty ready files, made since, remain).
        assert Spool(spool).unfinished_writes() == []
        # The dead process's journal was replayed before the SCP listened: all acknowledged, once each.
        assert [row.sop_instance_uid for row in index_rows(settings)] == acknowledged
        resent = subprocess.run(
            [
                "storescu",
                "-aet",
                "PACS",
                "-aec",
                settings.dicom_ae_title,
                settings.dicom_host,
                str(settings.dicom_port),
                *map(str, study),
            ],
            capture_output=True,
            timeout=120,
        )
        assert resent.returncode == 0, resent.stderr.decode(errors="replace")
    finally:
        scp.send_signal(signal.SIGTERM)
        scp.wait(timeout=30)

    rows = index_rows(settings)
    sent = {str(ds.SOPInstanceUID): path for ds, path in zip(datasets, study, strict=True)}
    assert sorted(row.sop_instance_uid for row in rows) == sorted(sent)  # no loss, no duplicate row
    assert not any(row.conflict for row in rows)
    objects = list((spool / "objects").rglob("*.dcm"))
    assert len(objects) == len(sent)  # no second copy of anything
    for row in rows:
        assert dataset_bytes(spool / row.spool_path) == dataset_bytes(sent[row.sop_instance_uid])

    engine = make_engine(settings.store_config())
    try:
        ledger = Ledger(engine, settings.ledger_config())
        receipts = [ledger.entry(i) for i in range(ledger.size())]
        received = {
            item["sop_instance_uid"]
            for entry in receipts
            if entry.kind == "dicom.received"
            for item in (entry.payload or {})["instances"]
        }
        ledger.verify()
    finally:
        engine.dispose()
    assert received == set(sent)

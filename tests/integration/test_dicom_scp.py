"""The Storage SCP over real sockets: pynetdicom and dcmtk as peers, real SQLite / PostgreSQL, real ledger."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dicom_support import DicomStore, dicom_store_for, make_dicom_store  # type: ignore[import-not-found]
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from integrations.dicom.config import DicomConfig
from integrations.dicom.scp import StorageScp
from integrations.dicom.synthetic import make_image, write_part10
from integrations.store.models import Instance, Study


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DicomStore]:
    yield from dicom_store_for(request.param, tmp_path, "vt_dicomscp")


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[DicomStore]:
    made = make_dicom_store(tmp_path)
    yield made
    made.engine.dispose()


def start_scp(tmp_path: Path, store: DicomStore, **overrides: Any) -> StorageScp:
    config = DicomConfig(spool_dir=tmp_path / "spool", port=0, min_free_bytes=0, fsync=False, **overrides)
    scp = StorageScp(config, store.sessions, store.ledger)
    scp.start()
    return scp


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the File Meta Information: what the sender put on the wire."""
    with path.open("rb") as fp:
        fp.seek(128 + 4)
        head = fp.read(12)
        group_length = int.from_bytes(head[8:12], "little")
        return path.read_bytes()[128 + 4 + 12 + group_length :]


def associate(port: int, calling: str = "PACS", called: str = "VERITRACE") -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    # Our SCP accepts the first proposed transfer syntax (stored as received): propose the files' own.
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title=called)


def test_echo_with_dcmtk(tmp_path: Path, sqlite_store: DicomStore) -> None:
    scp = start_scp(tmp_path, sqlite_store)
    try:
        result = subprocess.run(
            ["echoscu", "-aet", "PACS", "-aec", "VERITRACE", "127.0.0.1", str(scp.port)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    finally:
        scp.stop()


def test_store_index_duplicate_conflict_and_ledger(tmp_path: Path, store: DicomStore) -> None:
    scp = start_scp(tmp_path, store)
    study = generate_uid()
    images = [make_image(study_uid=study, instance_number=i, seed=i) for i in range(3)]
    try:
        assoc = associate(scp.port)
        assert assoc.is_established
        for ds in images:
            assert assoc.send_c_store(ds).Status == 0x0000
        assert assoc.send_c_store(images[0]).Status == 0x0000  # same bytes again
        changed = make_image(study_uid=study, sop_instance_uid=images[1].SOPInstanceUID, seed=99)
        changed.SeriesInstanceUID = images[1].SeriesInstanceUID
        assert assoc.send_c_store(changed).Status == 0x0000
        assoc.release()
    finally:
        scp.stop()
    with store.sessions() as session:
        stored = session.execute(select(Instance).order_by(Instance.id)).scalars().all()
        assert len(stored) == 4
        assert [row.conflict for row in stored] == [False, True, False, True]
        study_row = session.execute(select(Study)).scalar_one()
        assert (study_row.instance_count, study_row.patient_id, study_row.modality) == (4, "SYN-0001", "CT")
        assert study_row.calling_ae == "PACS" and study_row.state == "receiving"
        for row in stored:
            spooled = scp.spool.absolute(row.spool_path)
            assert row.spool_path.endswith(f"{row.sha256}.dcm")
            assert dcmread(spooled).SOPInstanceUID == row.sop_instance_uid
    assert len(list((scp.spool.root / "objects").rglob("*.dcm"))) == 4
    [entry] = store.entries("dicom.received")
    assert entry.study_uid == study and entry.actor == "dicom-scp:VERITRACE"
    assert entry.payload["instance_count"] == 5 and entry.payload["calling_ae"] == "PACS"
    receipts = entry.payload["instances"]
    assert sorted({i["sha256"] for i in receipts}) == sorted(r.sha256 for r in stored)
    assert [i["outcome"] for i in receipts] == ["stored", "stored", "stored", "duplicate", "conflict"]
    assert "SYNTHETIC" not in repr(entry)  # no patient name anywhere in the receipt


def test_bytes_in_spool_are_the_bytes_sent_by_dcmtk(tmp_path: Path, sqlite_store: DicomStore) -> None:
    scp = start_scp(tmp_path, sqlite_store)
    source = write_part10(
        make_image(study_uid=generate_uid(), rows=128, columns=128), tmp_path / "in" / "a.dcm"
    )
    try:
        result = subprocess.run(
            ["dcmsend", "-aet", "PACS", "-aec", "VERITRACE", "127.0.0.1", str(scp.port), str(source)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    finally:
        scp.stop()
    with sqlite_store.sessions() as session:
        row = session.execute(select(Instance)).scalar_one()
    assert dataset_bytes(scp.spool.absolute(row.spool_path)) == dataset_bytes(source)


def test_bad_dataset_fails_and_association_keeps_serving(tmp_path: Path, sqlite_store: DicomStore) -> None:
    scp = start_scp(tmp_path, sqlite_store)
    good = make_image(study_uid=generate_uid())
    broken = write_part10(make_image(study_uid=generate_uid()), tmp_path / "broken.dcm")
    data = broken.read_bytes()
    broken.write_bytes(data[:-4000])  # the pixel data element now claims more bytes than follow
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are, without re-encoding
    try:
        assoc = associate(scp.port)
        assert assoc.send_c_store(broken).Status == 0xC000
        assert assoc.send_c_store(good).Status == 0x0000
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        scp.stop()
    with sqlite_store.sessions() as session:
        assert len(session.execute(select(Instance)).all()) == 1


def test_disk_watermark_refuses_with_out_of_resources(tmp_path: Path, sqlite_store: DicomStore) -> None:
    scp = start_scp(tmp_path, sqlite_store)
    try:
        assoc = associate(scp.port)
        scp.spool.min_free_bytes = 2**62
        assert assoc.send_c_store(make_image(study_uid=generate_uid())).Status == 0xA700
        scp.spool.min_free_bytes = 0
        assert assoc.send_c_store(make_image(study_uid=generate_uid())).Status == 0x0000
        assoc.release()
    finally:
        scp.stop()


def test_calling_ae_and_host_allow_lists(tmp_path: Path, sqlite_store: DicomStore) -> None:
    scp = start_scp(tmp_path, sqlite_store, allowed_calling_aets=["PACS"])
    try:
        stranger = associate(scp.port, calling="STRANGER")
        assert stranger.is_rejected
        wrong_called = associate(scp.port, called="NOTUS")
        assert wrong_called.is_rejected
        friend = associate(scp.port)
        assert friend.is_established
        friend.release()
    finally:
        scp.stop()
    scp = start_scp(tmp_path, sqlite_store, allowed_calling_hosts=["10.255.255.1"])
    try:
        assert not associate(scp.port).is_established
    finally:
        scp.stop()
    scp = start_scp(tmp_path, sqlite_store, allowed_calling_hosts=["127.0.0.1"])
    try:
        assoc = associate(scp.port)
        assert assoc.is_established
        assoc.release()
    finally:
        scp.stop()


def test_malformed_pdu_is_dropped_and_scp_keeps_serving(tmp_path: Path, sqlite_store: DicomStore) -> None:
    import socket

    scp = start_scp(tmp_path, sqlite_store)
    try:
        with socket.create_connection(("127.0.0.1", scp.port), timeout=5) as raw:
            raw.sendall(b"\x01\x00\x00\x00\x00\x10" + b"\xde\xad" * 8)  # A-ASSOCIATE-RQ header, junk body
            raw.settimeout(5)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                raw.recv(1024)
        assoc = associate(scp.port)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        scp.stop()

"""Spool encryption at rest: through the real SCP with dcmtk as the peer, read back through the one reader.

What must hold: the file on disk is not the DICOM bytes; what `open_plaintext` returns is exactly what was
sent; the index keeps the plaintext digest and size; any change to the sealed file (a byte, a cut, two
chunks swapped, the header, another key) is an error and a ledger entry, never data; plaintext files from
before encryption stay readable beside sealed ones; and memory stays about one chunk for a large object.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dicom_support import DicomStore, make_dicom_store  # type: ignore[import-not-found]
from pydicom.uid import generate_uid
from sqlalchemy import select
from typer.testing import CliRunner

from cds.cli import app as cli_app
from cds.composition import Components
from cds.demo_study import build_demo_ct_study
from cds.settings import Settings
from cds.viewer.errors import ViewerRefusal
from cds.viewer.key_images import render_png
from integrations.analysis.pipeline import run_analysis
from integrations.dicom.config import DicomConfig
from integrations.dicom.scp import StorageScp
from integrations.dicom.spool import (
    INTEGRITY_FAILED,
    Spool,
    SpoolIntegrityError,
    SpoolKeyUnavailable,
    SpoolObjectPurged,
    purged_marker,
)
from integrations.dicom.spool_cipher import CHUNK_SIZE, HEADER_SIZE, TAG_SIZE
from integrations.dicom.spool_key import SpoolKey, SpoolKeyError, create_spool_key, load_spool_key
from integrations.dicom.stability import StableStudyTracker
from integrations.dicom.synthetic import make_image, write_part10
from integrations.store.models import Analysis, Instance
from model.dicom_source import read_dicom
from model.imaging import DicomImageError, load_model_image
from model.series_selection import select_frames

STRIDE = CHUNK_SIZE + TAG_SIZE


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DicomStore]:
    made = make_dicom_store(tmp_path)
    yield made
    made.engine.dispose()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "spool.key"
    create_spool_key(path)
    return path


def dataset_bytes(data: bytes) -> bytes:
    """The bytes after the File Meta Information: what the sender put on the wire."""
    group_length = int.from_bytes(data[128 + 4 + 8 : 128 + 4 + 12], "little")
    return data[128 + 4 + 12 + group_length :]


def dcmsend(port: int, *files: Path) -> None:
    result = subprocess.run(
        ["dcmsend", "-aet", "PACS", "-aec", "VERITRACE", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def received_through_scp(
    tmp_path: Path, store: DicomStore, key_file: Path | None, *files: Path
) -> StorageScp:
    config = DicomConfig(
        spool_dir=tmp_path / "spool", port=0, min_free_bytes=0, fsync=False, spool_key_file=key_file
    )
    scp = StorageScp(config, store.sessions, store.ledger)
    scp.start()
    try:
        dcmsend(scp.port, *files)
    finally:
        scp.stop()
    return scp


def spool_paths(store: DicomStore) -> list[Instance]:
    with store.sessions() as session:
        return list(session.execute(select(Instance).order_by(Instance.id)).scalars())


def big_image(tmp_path: Path, name: str, seed: int = 0) -> Path:
    """A 1024x1024 16-bit image: 2 MiB of pixels, so three chunks."""
    image = make_image(study_uid=generate_uid(), rows=1024, columns=1024, seed=seed)
    return write_part10(image, tmp_path / "in" / name)


def test_scp_round_trip_is_sealed_on_disk_and_byte_identical_when_read(
    tmp_path: Path, store: DicomStore, key_file: Path
) -> None:
    source = big_image(tmp_path, "a.dcm")
    scp = received_through_scp(tmp_path, store, key_file, source, source)  # the second is a duplicate
    [row] = spool_paths(store)
    on_disk = scp.spool.absolute(row.spool_path).read_bytes()
    with scp.spool.open_plaintext(row.spool_path) as plain:
        received = plain.read()
    assert dataset_bytes(received) == dataset_bytes(source.read_bytes())
    assert (hashlib.sha256(received).hexdigest(), len(received)) == (row.sha256, row.size_bytes)
    assert scp.spool.is_encrypted(row.spool_path) and on_disk[128:132] == b"VTEC"
    assert len(on_disk) == HEADER_SIZE + len(received) + 3 * TAG_SIZE  # three chunks, one tag each
    assert b"SYNTHETIC" not in on_disk and dataset_bytes(source.read_bytes())[-4096:] not in on_disk
    assert list((scp.spool.root / "tmp").iterdir()) == []  # no plaintext left behind
    image = load_model_image(scp.spool.stored(row.spool_path))  # the model reads it like any file
    assert image.ref.sop_uid == row.sop_instance_uid
    receipts = [i for e in store.entries("dicom.received") for i in e.payload["instances"]]
    assert [r["outcome"] for r in receipts] == ["stored", "duplicate"]


@pytest.mark.parametrize(
    ("mutation", "problem"),
    [
        ("flip-byte-in-chunk-1", "chunk 1 failed authentication"),
        ("cut-after-chunk-1", "chunk 1 failed authentication"),  # the new last chunk was not sealed as last
        ("swap-chunks-0-1", "chunk 0 failed authentication"),
        ("flip-chunk-size-in-header", "chunk 2 failed authentication"),
        ("drop-last-tag-byte", "chunk 2 failed authentication"),
    ],
)
def test_any_change_to_a_sealed_file_is_a_clear_audited_error(
    tmp_path: Path, store: DicomStore, key_file: Path, mutation: str, problem: str
) -> None:
    scp = received_through_scp(tmp_path, store, key_file, big_image(tmp_path, "a.dcm"))
    [row] = spool_paths(store)
    path = scp.spool.absolute(row.spool_path)
    data = bytearray(path.read_bytes())
    body = HEADER_SIZE
    if mutation == "flip-byte-in-chunk-1":
        data[body + STRIDE + 1000] ^= 0x01
    elif mutation == "cut-after-chunk-1":
        del data[body + 2 * STRIDE :]
    elif mutation == "swap-chunks-0-1":
        first, second = data[body : body + STRIDE], data[body + STRIDE : body + 2 * STRIDE]
        data[body : body + 2 * STRIDE] = second + first
    elif mutation == "flip-chunk-size-in-header":
        data[12] ^= 0x01  # low byte of the chunk size: still within bounds, no longer what was sealed
    elif mutation == "drop-last-tag-byte":
        del data[-1:]
    path.write_bytes(bytes(data))
    with pytest.raises(SpoolIntegrityError, match=problem), scp.spool.open_plaintext(row.spool_path) as plain:
        while plain.read(65536):
            pass
    with pytest.raises(DicomImageError, match="not a readable DICOM file"):
        load_model_image(scp.spool.stored(row.spool_path))
    failures = store.entries(INTEGRITY_FAILED)
    assert len(failures) == 2 and all(problem in f.payload["problem"] for f in failures)
    assert failures[0].payload["spool_path"] == row.spool_path
    assert "SYNTHETIC" not in repr(failures) and "SYN-0001" not in repr(failures)


def test_another_key_or_no_key_cannot_read_and_says_why(
    tmp_path: Path, store: DicomStore, key_file: Path
) -> None:
    scp = received_through_scp(tmp_path, store, key_file, big_image(tmp_path, "a.dcm"))
    [row] = spool_paths(store)
    other = Spool(scp.spool.root, key=SpoolKey(os.urandom(32)), audit=store.ledger)
    with pytest.raises(SpoolIntegrityError, match="sealed under another key"):
        other.open_plaintext(row.spool_path)
    with pytest.raises(SpoolKeyUnavailable, match="no spool key is configured"):
        Spool(scp.spool.root).open_plaintext(row.spool_path)


def test_plaintext_files_from_before_encryption_stay_readable_beside_sealed_ones(
    tmp_path: Path, store: DicomStore, key_file: Path
) -> None:
    study = generate_uid()
    before = write_part10(make_image(study_uid=study, instance_number=1, seed=1), tmp_path / "in" / "1.dcm")
    after = write_part10(make_image(study_uid=study, instance_number=2, seed=2), tmp_path / "in" / "2.dcm")
    received_through_scp(tmp_path, store, None, before)  # encryption off
    scp = received_through_scp(tmp_path, store, key_file, after, before)  # on; `before` again: a duplicate
    rows = spool_paths(store)
    assert [scp.spool.is_encrypted(r.spool_path) for r in rows] == [False, True]
    for row, source in zip(rows, (before, after), strict=True):
        with scp.spool.open_plaintext(row.spool_path) as plain:
            assert dataset_bytes(plain.read()) == dataset_bytes(source.read_bytes())
    stored = [scp.spool.stored(r.spool_path) for r in rows]
    assert sorted(frame for _, frame in select_frames(stored, 4)) == [0, 0]
    assert {read_dicom(s, stop_before_pixels=True).InstanceNumber for s in stored} == {1, 2}


def test_a_large_object_is_sealed_and_read_in_flat_memory(tmp_path: Path, key_file: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False, key=load_spool_key(key_file))
    size = 48 * 1024 * 1024
    incoming = spool.incoming()
    hasher = hashlib.sha256()
    block = os.urandom(1024 * 1024)
    for n in range(size // len(block)):
        piece = block[n % 7 :] + block[: n % 7]  # distinct chunks, so a reordering would show
        incoming.write(piece)
        hasher.update(piece)
    written = incoming.finish()
    tracemalloc.start()
    try:
        spooled = spool.adopt(written.path, written)
        read_back = hashlib.sha256()
        with spool.open_plaintext(spooled.relative_path) as plain:
            plain.seek(size - 10)
            assert len(plain.read()) == 10
            plain.seek(0)
            while piece := plain.read(256 * 1024):
                read_back.update(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert spooled.sha256 == hasher.hexdigest() == read_back.hexdigest() and spooled.size_bytes == size
    assert spool.is_encrypted(spooled.relative_path)
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes for a {size}-byte object"


def test_key_file_is_owner_only_never_replaced_and_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "k" / "spool.key"
    key = create_spool_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_spool_key(path).key_id == key.key_id
    assert key.material.hex() not in repr(key)
    with pytest.raises(SpoolKeyError, match="refusing to replace"):
        create_spool_key(path)
    path.chmod(0o640)
    with pytest.raises(SpoolKeyError, match="chmod 600"):
        load_spool_key(path)
    with pytest.raises(SpoolKeyError, match="does not exist"):
        load_spool_key(tmp_path / "missing.key")


def test_cli_creates_the_key_where_the_setting_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "secrets" / "spool.key"
    monkeypatch.setenv("VERITRACE_SPOOL_KEY_FILE", str(target))
    result = CliRunner().invoke(cli_app, ["spool", "create-key"])
    assert result.exit_code == 0, result.output
    key = load_spool_key(target)
    assert key.key_id.hex() in result.output and key.material.hex() not in result.output
    assert target.read_text().strip() not in result.output
    again = CliRunner().invoke(cli_app, ["spool", "create-key"])
    assert again.exit_code == 2 and "refusing to replace" in again.output


def test_viewer_says_tampered_or_purged_instead_of_rendering(
    tmp_path: Path, store: DicomStore, key_file: Path
) -> None:
    scp = received_through_scp(tmp_path, store, key_file, big_image(tmp_path, "a.dcm"))
    [row] = spool_paths(store)
    spool = Spool(scp.spool.root, key=load_spool_key(key_file), audit=store.ledger)
    assert render_png(spool, row.spool_path, frame=0, preset="default", size="thumb")[:4] == b"\x89PNG"
    with pytest.raises(ViewerRefusal) as purged:
        render_png(spool, purged_marker(row.spool_path), frame=0, preset="default", size="thumb")
    assert purged.value.status == 410
    with pytest.raises(SpoolObjectPurged):
        spool.open_plaintext(purged_marker(row.spool_path))
    path = spool.absolute(row.spool_path)
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ViewerRefusal) as tampered:
        render_png(spool, row.spool_path, frame=0, preset="default", size="thumb")
    assert tampered.value.status == 500 and len(store.entries(INTEGRITY_FAILED)) == 1


def test_sealed_stream_writes_are_content_addressed_like_plaintext(tmp_path: Path, key_file: Path) -> None:
    sealed = Spool(tmp_path / "sealed", fsync=False, key=load_spool_key(key_file))
    plain = Spool(tmp_path / "plain", fsync=False)
    payload = os.urandom(CHUNK_SIZE)  # exactly one chunk: the last chunk is full, not empty
    first, again = sealed.write_stream([payload[:10], payload[10:]]), sealed.write_stream([payload])
    reference = plain.write_stream([payload])
    assert (first.relative_path, first.sha256, first.size_bytes) == (
        reference.relative_path,
        reference.sha256,
        reference.size_bytes,
    )
    assert again.already_present and not first.already_present
    with sealed.open_plaintext(first.relative_path) as reader:
        assert isinstance(reader, io.BufferedReader) and reader.read() == payload
    empty = sealed.write_stream([])
    with sealed.open_plaintext(empty.relative_path) as reader:
        assert reader.read() == b"" and empty.sha256 == hashlib.sha256(b"").hexdigest()


def test_a_process_with_a_configured_but_missing_key_does_not_start(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, spool_key_file=tmp_path / "absent.key")
    with pytest.raises(SpoolKeyError, match="veritrace spool create-key"):
        Components(settings).prepare_storage()


def test_adopting_a_finished_file_seals_it_and_a_changed_temp_file_is_refused(
    tmp_path: Path, key_file: Path
) -> None:
    spool = Spool(tmp_path / "spool", fsync=False, key=load_spool_key(key_file))
    source = write_part10(make_image(study_uid=generate_uid()), tmp_path / "stow-part.dcm")
    spooled = spool.adopt(source)  # STOW-RS parts arrive without a digest: hashed, then sealed
    assert not source.exists() and spool.is_encrypted(spooled.relative_path)
    with spool.open_plaintext(spooled.relative_path) as plain:
        assert hashlib.sha256(plain.read()).hexdigest() == spooled.sha256
    incoming = spool.incoming()
    incoming.write(b"the bytes that were received")
    written = incoming.finish()
    written.path.write_bytes(b"other bytes on disk by now")
    with pytest.raises(SpoolIntegrityError, match="changed before sealing"):
        spool.adopt(written.path, written)
    assert sorted(p.name for p in spool.objects_dir.rglob("*.dcm")) == [f"{spooled.sha256}.dcm"]


def test_worker_analyses_a_sealed_study_and_skips_a_tampered_slice_audited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, key_file: Path
) -> None:
    monkeypatch.setenv("VERITRACE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VERITRACE_MODEL_PATH", str(tiny_model_dir))
    monkeypatch.setenv("VERITRACE_AGENT_KNOWLEDGE_TOOLS", "false")
    monkeypatch.setenv("VERITRACE_SPOOL_KEY_FILE", str(key_file))
    components = Components(Settings())
    components.prepare_storage()
    config = components.settings.dicom_config().model_copy(update={"port": 0})
    scp = StorageScp(config, components.session_factory, components.ledger)
    scp.start()
    try:
        paths = build_demo_ct_study(tmp_path / "study", patient_id="unmatched-patient", slices=3)
        sent = subprocess.run(
            ["storescu", "-aec", config.ae_title, "127.0.0.1", str(scp.port), *map(str, paths)],
            capture_output=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr.decode()
    finally:
        scp.stop()
    queued: list[str] = []
    StableStudyTracker(components.session_factory, components.ledger, 0.0, queued.append).poll_once(
        datetime.now(UTC) + timedelta(seconds=5)
    )
    with components.session_factory() as session:
        rows = list(session.execute(select(Instance).order_by(Instance.id)).scalars())
    assert all(scp.spool.is_encrypted(row.spool_path) for row in rows)
    tampered = rows[0]
    path = scp.spool.absolute(tampered.spool_path)
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 200] ^= 0x40
    path.write_bytes(bytes(data))

    report_id = run_analysis(components.worker_runtime(), queued[0])

    assert report_id is not None
    with components.session_factory() as session:
        analysis = session.get(Analysis, queued[0])
    assert analysis is not None and analysis.status == "completed" and analysis.trace is not None
    seen = {image["sop_uid"] for image in analysis.trace["images"]}
    assert seen and tampered.sop_instance_uid not in seen
    failures = [
        components.ledger.entry(i)
        for i in range(components.ledger.size())
        if components.ledger.entry(i).kind == INTEGRITY_FAILED
    ]
    assert failures and {f.payload["spool_path"] for f in failures} == {tampered.spool_path}

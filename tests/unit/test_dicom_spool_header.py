"""Spool (content addressing, atomic adopt, watermark) and header parsing (truncation, garbage)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from integrations.dicom.header import UnreadableDataset, read_instance_header
from integrations.dicom.spool import Spool
from integrations.dicom.synthetic import make_image, write_part10


def test_adopt_moves_file_under_its_digest_and_repeat_is_not_a_second_copy(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    source = write_part10(make_image(study_uid=generate_uid()), tmp_path / "in.dcm")
    data = source.read_bytes()
    first = spool.adopt(source)
    assert not source.exists()
    assert first.relative_path.endswith(f"{first.sha256}.dcm")
    assert spool.absolute(first.relative_path).read_bytes() == data
    (tmp_path / "again.dcm").write_bytes(data)
    second = spool.adopt(tmp_path / "again.dcm")
    assert second.already_present and second.relative_path == first.relative_path
    assert len(list((spool.root / "objects").rglob("*.dcm"))) == 1


def test_file_names_never_contain_uids(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    ds = make_image(study_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5.6")
    spooled = spool.adopt(write_part10(ds, tmp_path / "x.dcm"))
    assert "1.2.3.4" not in spooled.relative_path


def test_absolute_refuses_paths_outside_the_root(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(ValueError, match="escapes"):
        spool.absolute("../../etc/passwd")


def test_watermark(tmp_path: Path) -> None:
    assert Spool(tmp_path / "a", min_free_bytes=0).has_room()
    assert not Spool(tmp_path / "b", min_free_bytes=2**62).has_room()


def test_write_stream_hashes_while_writing_and_sweep_removes_leftovers(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    spooled = spool.write_stream([b"abc", b"def"])
    assert spooled.sha256 == "bef57ec7f53a6d40beb640a780a639c83bc29ac8a9816f1fc6c5c6dcd93c4721"
    assert spooled.size_bytes == 6
    (spool.tmp_dir / "crashed.part").write_bytes(b"half")
    assert spool.sweep_tmp() == 1


def test_header_reads_index_attributes(tmp_path: Path) -> None:
    study = generate_uid()
    path = write_part10(make_image(study_uid=study, modality="CR", body_part="CHEST"), tmp_path / "i.dcm")
    header = read_instance_header(path)
    assert header.study_uid == study
    assert header.modality == "CR" and header.body_part == "CHEST"
    assert header.transfer_syntax_uid == "1.2.840.10008.1.2.1"


def test_truncated_native_pixel_data_is_unreadable(tmp_path: Path) -> None:
    path = write_part10(make_image(study_uid=generate_uid()), tmp_path / "t.dcm")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UnreadableDataset, match="ends early"):
        read_instance_header(path)


def test_truncated_encapsulated_pixel_data_is_unreadable(tmp_path: Path) -> None:
    ds = make_image(study_uid=generate_uid())
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 998 + b"\xff\xd9"])
    path = write_part10(ds, tmp_path / "e.dcm")
    read_instance_header(path)  # complete: fine
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(UnreadableDataset):
        read_instance_header(path)


@pytest.mark.parametrize("body", [b"", b"garbage" * 50, b"\x00" * 128 + b"DICM" + b"\xff" * 300])
def test_garbage_is_unreadable(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "g.dcm"
    path.write_bytes(body)
    with pytest.raises(UnreadableDataset):
        read_instance_header(path)


def test_missing_study_uid_is_unreadable(tmp_path: Path) -> None:
    ds = make_image(study_uid=generate_uid())
    del ds.StudyInstanceUID
    path = write_part10(ds, tmp_path / "m.dcm")
    with pytest.raises(UnreadableDataset, match="StudyInstanceUID"):
        read_instance_header(path)


def test_a_write_in_progress_survives_another_process_sweep_and_a_dead_one_does_not(tmp_path: Path) -> None:
    """An API process streaming a STOW-RS part while a dicom process starts on the same spool."""
    api = Spool(tmp_path / "spool", fsync=False)
    in_progress = api.scratch_path()
    in_progress.write_bytes(b"half a STOW-RS part")
    dicom = Spool(tmp_path / "spool", fsync=False)
    assert dicom.sweep_tmp() == 0
    assert in_progress.read_bytes() == b"half a STOW-RS part"
    assert dicom.unfinished_writes() == [in_progress]

    scratch = api._scratch
    assert scratch is not None
    scratch.release(remove=False)  # as a kill would: the lock drops, the file stays
    assert dicom.sweep_tmp() == 1
    assert not in_progress.exists() and not any(api.tmp_dir.iterdir())
    assert api.write_stream([b"after"]).size_bytes == 5  # the next write makes a new directory


def test_scratch_directory_goes_when_released_empty(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    spool.write_stream([b"one"])
    assert len([path for path in spool.tmp_dir.iterdir() if path.is_dir()]) == 1
    spool.release_scratch()
    assert not any(spool.tmp_dir.iterdir())

"""Every file in pydicom's bundled test data, sent by dcmtk `dcmsend` without decompression.

Each storage object must be stored byte-identical (the data set after the File Meta Information) and
indexed, or refused with a failure status while the association carries on. Files dcmsend itself will
not send (no SOP class, no meta, invalid UIDs) are outside what a PACS could ever send us.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dicom_support import DicomStore, make_dicom_store  # type: ignore[import-not-found]
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian
from sqlalchemy import select

from integrations.dicom.config import DicomConfig
from integrations.dicom.scp import StorageScp
from integrations.store.models import Instance


def dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    group_length = int.from_bytes(data[128 + 4 + 8 : 128 + 4 + 12], "little")
    return data[128 + 4 + 12 + group_length :]


def sent_syntax(source: Path) -> str:
    """The transfer syntax dcmsend sends in: the file's own, except retired big endian, which it
    converts to little endian when that is accepted (the SCP accepts what is proposed first)."""
    syntax = str(dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return ExplicitVRLittleEndian if syntax == ExplicitVRBigEndian else syntax


def same_elements(received: Dataset, sent: Dataset) -> bool:
    """Equal apart from what dcmtk drops when it sends: group lengths and Data Set Trailing Padding."""
    reencoded = received.file_meta.TransferSyntaxUID != sent.file_meta.TransferSyntaxUID
    # Byte-order dependent binary values (LUT data in OW, etc.) are only comparable in the same encoding.
    binary = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"} if reencoded else set()

    def kept(ds: Dataset) -> dict[int, Any]:
        return {
            int(e.tag): e.value
            for e in ds
            if e.tag.element != 0 and e.tag not in (0xFFFCFFFC, 0x7FE00010) and e.VR not in binary
        }

    if kept(received) != kept(sent):
        return False
    if "PixelData" not in sent:
        return True
    if not reencoded:
        return bool(received.PixelData == sent.PixelData)
    # The sender changed the encoding (big endian -> little endian, or decoded RLE): same pixels.
    return bool((received.pixel_array == sent.pixel_array).all())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DicomStore]:
    made = make_dicom_store(tmp_path)
    yield made
    made.engine.dispose()


def sendable(paths: list[str]) -> dict[str, Path]:
    """SOP Instance UID -> file, for Part 10 files with the meta dcmsend needs."""
    found: dict[str, Path] = {}
    for name in paths:
        try:
            ds = dcmread(name, stop_before_pixels=True)
            meta = ds.file_meta
            if meta.get("MediaStorageSOPClassUID") and meta.get("MediaStorageSOPInstanceUID") and ds.preamble:
                found.setdefault(str(meta.MediaStorageSOPInstanceUID), Path(name))
        except Exception:
            continue
    return found


def test_every_pydicom_test_file(tmp_path: Path, store: DicomStore) -> None:
    files = sendable(get_testdata_files("*"))
    assert len(files) > 50
    scp = StorageScp(
        DicomConfig(spool_dir=tmp_path / "spool", port=0, min_free_bytes=0, fsync=False),
        store.sessions,
        store.ledger,
    )
    scp.start()
    report = tmp_path / "report.txt"
    try:
        subprocess.run(
            [
                "dcmsend",
                "-aet",
                "PACS",
                "-aec",
                "VERITRACE",
                "-dn",
                "-nh",
                "+crf",
                str(report),
                "127.0.0.1",
                str(scp.port),
                *map(str, files.values()),
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
    finally:
        scp.stop()
    text = report.read_text(errors="replace")
    # Indexed by the data set's SOP Instance UID. Several test files share one (the rtdose_* family:
    # different File Meta UIDs, one data set UID, different bytes), so each UID may hold several versions,
    # all kept and flagged as conflicts; a file was stored when one of its UID's versions is that file.
    versions: dict[str, list[Instance]] = {}
    with store.sessions() as session:
        for row in session.execute(select(Instance)).scalars():
            versions.setdefault(row.sop_instance_uid, []).append(row)

    def stored_as_sent(source: Path, row: Instance) -> bool:
        spooled = scp.spool.absolute(row.spool_path)
        return dataset_bytes(spooled) == dataset_bytes(source) or (
            # dcmtk re-encodes on sending (undefined-length sequences get explicit lengths, deflate is
            # inflated and deflated again, trailing padding dropped): then the elements, pixel data
            # included, must be equal in the syntax the sender chose.
            row.transfer_syntax_uid in (sent_syntax(source), ExplicitVRLittleEndian)
            and same_elements(dcmread(spooled), dcmread(source))
        )

    stored = 0
    stored_names: set[str] = set()
    refused: list[str] = []
    mismatched = []
    for source in files.values():
        data_set_uid = str(dcmread(source, stop_before_pixels=True, force=True).get("SOPInstanceUID", ""))
        candidates = versions.get(data_set_uid, [])
        if any(stored_as_sent(source, row) for row in candidates):
            stored += 1
            stored_names.add(source.name)
        elif re.search(re.escape(source.name) + r".*\n(.*\n)*?.*(0x[AC][0-9A-F]{3}|Failure|Error)", text):
            refused.append(source.name)
        elif candidates:
            mismatched.append(
                f"{source.name} {sent_syntax(source)} -> {[r.transfer_syntax_uid for r in candidates]}"
            )
    # rtdose_rle_1frame.dcm used to look "decompressed with different values": it was compared with
    # another file of the same data set UID. The file itself is malformed (an Implicit VR data set under an
    # explicit-VR transfer syntax): dcmtk sends it with a SOP Class that does not match its data set, and
    # we refuse it with 0xA900 (Data Set does not match SOP Class).
    assert mismatched == [], "\n".join(mismatched)
    assert "rtdose_rle_1frame.dcm" in refused
    # The larger objects of the pydicom-data package (2-7 MB; JPEG 2000, multi-frame, colour) all arrive.
    large = {path.name for path in files.values() if path.stat().st_size > 2_000_000}
    assert len(large) >= 6 and large <= stored_names, sorted(large - stored_names)
    assert stored >= 0.8 * len(files), f"only {stored} of {len(files)} stored; refused {len(refused)}"

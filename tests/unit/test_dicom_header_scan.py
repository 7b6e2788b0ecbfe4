"""The direct header scan must agree with the pydicom reader wherever it answers.

Every file in pydicom's bundled test data is read both ways: when the scan gives a header it must equal
pydicom's, when it refuses a file as unreadable pydicom must refuse it too; declining (None) is always
allowed. Truncations and byte flips of the common little-endian files do the same for damaged input.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pydicom.data
import pytest

from integrations.dicom.header import (
    UnreadableDataset,
    read_instance_header,
    read_instance_header_with_pydicom,
)
from integrations.dicom.header_scan import scan_instance_header
from integrations.dicom.synthetic import make_image, write_part10

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
# The scan may be stricter than pydicom in one way: pydicom reads a file whose last element runs past the
# end (it warns), the scan refuses it, since a truncated file must not be indexed as a good instance.
_TRUNCATION = ("past the end", "truncated", "ends without", "ends early")


def _outcome(reader, path: Path) -> object:  # type: ignore[no-untyped-def]
    try:
        return reader(path)
    except UnreadableDataset as exc:
        return ("unreadable", str(exc))


def _part10_files() -> list[Path]:
    files = []
    for path in sorted(TEST_FILES.rglob("*.dcm")):
        with path.open("rb") as fp:
            head = fp.read(132)
        if head[128:132] == b"DICM":
            files.append(path)
    return files


def _agrees(path: Path) -> bool:
    """True when the scan answered (not declined); asserts agreement with pydicom."""
    scanned = _outcome(scan_instance_header, path)
    if scanned is None:
        return False
    authority = _outcome(read_instance_header_with_pydicom, path)
    if isinstance(scanned, tuple):
        assert isinstance(authority, tuple) or any(word in scanned[1] for word in _TRUNCATION), path.name
    else:
        assert scanned == authority, path.name
    return True


def test_scan_agrees_with_pydicom_on_every_bundled_file() -> None:
    files = _part10_files()
    assert len(files) > 50
    answered = sum(_agrees(path) for path in files)
    # Most bundled files are little endian with ASCII identifiers: the fast path must cover them.
    assert answered > len(files) // 2


def test_scan_answers_for_what_the_scp_spools(tmp_path: Path) -> None:
    ds = make_image(
        study_uid="1.2.3", series_uid="1.2.3.4", modality="CT", rows=64, columns=64, instance_number=1, seed=1
    )
    path = tmp_path / "ct.dcm"
    write_part10(ds, path)
    header = scan_instance_header(path)
    assert header is not None
    assert header == read_instance_header_with_pydicom(path) == read_instance_header(path)
    assert (header.study_uid, header.modality) == ("1.2.3", "CT")


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "SC_rgb_rle.dcm"]
)
def test_damaged_copies_agree(name: str, tmp_path: Path) -> None:
    source = TEST_FILES / name
    data = source.read_bytes()
    rng = random.Random(name)
    path = tmp_path / name
    cases = [data[:cut] for cut in sorted({rng.randrange(132, len(data)) for _ in range(40)})]
    for _ in range(60):
        flipped = bytearray(data)
        at = rng.randrange(132, min(len(data), 4096))
        flipped[at] ^= 1 << rng.randrange(8)
        cases.append(bytes(flipped))
    for case in cases:
        path.write_bytes(case)
        _agrees(path)


def test_truncated_pixel_data_is_unreadable_on_the_fast_path(tmp_path: Path) -> None:
    source = TEST_FILES / "CT_small.dcm"
    path = tmp_path / "cut.dcm"
    shutil.copy(source, path)
    with path.open("r+b") as fp:
        fp.truncate(39_000)  # pixel data (OW, 32768 bytes at 6300) ends at 39068
    with pytest.raises(UnreadableDataset):
        scan_instance_header(path)

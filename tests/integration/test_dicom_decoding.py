"""Decoding for analysis: every compressed transfer syntax a PACS sends, received as sent, then decoded.

Each file goes through our SCP from a dcmtk sender without decompression (the spool keeps it in its own
transfer syntax), and the spooled file is decoded by the same calls the analysis uses (pydicom's
`pixel_array` with the pylibjpeg / openjpeg / libjpeg / RLE plugins, then `load_model_image`). The pixels
are compared with an independent reference: the uncompressed original from pydicom's test data, or dcmtk's
own decoder (`dcmdjpeg`, `dcmdjpls`, `dcmconv`) run on the same file. Lossless syntaxes must match exactly.

Character sets: a draft SR copies the patient and study attributes of the received images; names in
every character set of pydicom's charset files must survive that copy.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from dicom_support import make_dicom_store  # type: ignore[import-not-found]
from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.pixels import pixel_array
from sqlalchemy import select

from integrations.dicom.config import DicomConfig
from integrations.dicom.scp import StorageScp
from integrations.dicom.sr_export import build_draft_sr
from integrations.store.models import Instance
from model.imaging import load_model_image
from model.report import DraftReport, Statement


@dataclass(frozen=True)
class Case:
    file: str
    syntax: str
    # The uncompressed reference: a pydicom test file name, or a dcmtk command decoding `file`.
    reference: str | tuple[str, ...]
    # 0 for lossless; otherwise the largest mean absolute difference allowed, as a fraction of the range.
    tolerance: float = 0.0


CASES = [
    Case("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", "SC_rgb.dcm", 0.01),  # JPEG baseline 8-bit
    Case("JPGExtended.dcm", "1.2.840.10008.1.2.4.51", ("dcmdjpeg",), 0.01),  # JPEG extended 12-bit
    Case("JPEG-LL.dcm", "1.2.840.10008.1.2.4.70", ("dcmdjpeg",)),  # JPEG lossless SV1, 16-bit
    Case("JPGLosslessP14SV1_1s_1f_8b.dcm", "1.2.840.10008.1.2.4.70", ("dcmdjpeg",)),
    Case("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70", "SC_rgb.dcm"),  # SV1, colour
    Case("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", "MR_small.dcm"),
    Case("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81", ("dcmdjpls",), 0.01),
    Case("SC_rgb_jls_lossy_line.dcm", "1.2.840.10008.1.2.4.81", "SC_rgb.dcm", 0.02),
    Case("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90", "MR_small.dcm"),
    Case("US1_J2KR.dcm", "1.2.840.10008.1.2.4.90", "US1_UNCR.dcm"),  # pydicom-data, YBR_RCT colour
    Case("JPEG2000.dcm", "1.2.840.10008.1.2.4.91", "JPEG-LL.dcm", 0.03),  # lossy JPEG 2000
    Case("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", "MR_small.dcm"),
    Case("SC_rgb_rle.dcm", "1.2.840.10008.1.2.5", "SC_rgb.dcm"),
    Case("image_dfl.dcm", "1.2.840.10008.1.2.1.99", ("dcmconv", "+te")),  # deflate
    Case("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2", "MR_small.dcm"),
]
BIG_ENDIAN = "1.2.840.10008.1.2.2"


def source(name: str) -> Path:
    found = get_testdata_file(name)
    assert isinstance(found, str), f"{name} is not in pydicom's test data or pydicom-data"
    return Path(found)


def sendable(name: str, folder: Path) -> str:
    """The test file itself, or, when it lacks the Study / Series Instance UIDs every IOD requires (the
    JPEG-LS near-lossless samples do; our SCP rightly refuses them with 0xC000 and the analysis could
    not cite them), a copy with them added. Pixel data is copied byte for byte in the file's syntax."""
    path = source(name)
    ds = dcmread(path)
    if "StudyInstanceUID" in ds and "SeriesInstanceUID" in ds:
        return str(path)
    ds.StudyInstanceUID = ds.get("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.1001")
    ds.SeriesInstanceUID = ds.get("SeriesInstanceUID", "1.2.826.0.1.3680043.8.498.1002")
    copy = folder / name
    ds.save_as(copy, enforce_file_format=True)
    return str(copy)


@pytest.fixture(scope="module")
def spooled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], Path]]:
    """Send every case once through a real SCP; (SOP Instance UID, transfer syntax) -> spooled file.

    The key has the syntax because several cases share one SOP Instance UID (MR_small in five syntaxes):
    the spool keeps each as its own version.
    """
    tmp = tmp_path_factory.mktemp("decoding")
    store = make_dicom_store(tmp)
    scp = StorageScp(
        DicomConfig(spool_dir=tmp / "spool", port=0, min_free_bytes=0, fsync=False),
        store.sessions,
        store.ledger,
    )
    scp.start()
    try:
        files = [sendable(case.file, tmp) for case in CASES if case.syntax != BIG_ENDIAN]
        charsets = [name for name in get_charset_files("chr*.dcm") if "SQEncoding" not in name]
        sent = subprocess.run(
            ["dcmsend", "-aec", "VERITRACE", "-dn", "-nh", "127.0.0.1", str(scp.port), *files, *charsets],
            capture_output=True,
            timeout=120,
        )
        assert sent.returncode == 0, sent.stderr.decode(errors="replace")
        # dcmsend converts big endian to little endian; storescu -xb proposes big endian first.
        big_endian = [str(source(case.file)) for case in CASES if case.syntax == BIG_ENDIAN]
        sent = subprocess.run(
            ["storescu", "-xb", "-aec", "VERITRACE", "127.0.0.1", str(scp.port), *big_endian],
            capture_output=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr.decode(errors="replace")
    finally:
        scp.stop()
    with store.sessions() as session:
        rows = session.execute(select(Instance)).scalars().all()
    yield {
        (row.sop_instance_uid, row.transfer_syntax_uid): scp.spool.absolute(row.spool_path) for row in rows
    }
    store.engine.dispose()


def reference_pixels(case: Case, tmp_path: Path) -> np.ndarray:
    if isinstance(case.reference, str):
        return np.asarray(pixel_array(dcmread(source(case.reference))))
    tool, *options = case.reference
    out = tmp_path / "reference.dcm"
    subprocess.run([tool, *options, str(source(case.file)), str(out)], check=True, capture_output=True)
    decoded = dcmread(out)
    assert not decoded.file_meta.TransferSyntaxUID.is_compressed
    return np.asarray(pixel_array(decoded))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.file)
def test_received_in_its_own_syntax_and_decoded(
    case: Case, spooled: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    sop_uid = str(dcmread(source(case.file), stop_before_pixels=True).SOPInstanceUID)
    path = spooled.get((sop_uid, case.syntax))
    assert path is not None, f"{case.file} was not stored in {case.syntax}"

    decoded = np.asarray(pixel_array(dcmread(path))).astype(np.float64)
    reference = reference_pixels(case, tmp_path).astype(np.float64)

    assert decoded.shape == reference.shape
    if case.tolerance == 0.0:
        assert np.array_equal(decoded, reference)
    else:
        value_range = float(reference.max() - reference.min()) or 1.0
        assert float(np.abs(decoded - reference).mean()) <= case.tolerance * value_range
    image = load_model_image(path)
    assert image.image.size[0] > 0 and image.ref.sop_uid == sop_uid


CHARSET_FILES = sorted(Path(name).name for name in get_charset_files("chr*.dcm") if "SQEncoding" not in name)


@pytest.mark.parametrize("name", CHARSET_FILES)
def test_names_in_every_character_set_survive_into_the_draft_sr(
    name: str, spooled: dict[tuple[str, str], Path]
) -> None:
    original = dcmread(get_charset_files(name)[0], stop_before_pixels=True)
    key = (str(original.SOPInstanceUID), str(original.file_meta.TransferSyntaxUID))
    received = dcmread(spooled[key], stop_before_pixels=True)
    report = DraftReport(findings=[Statement(text="Draft")], untrained_model=True)

    sr = build_draft_sr(report, [received])
    buffer = BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    back = dcmread(BytesIO(buffer.getvalue()))

    assert str(back.PatientName) == str(original.PatientName)
    assert back.StudyInstanceUID == original.StudyInstanceUID

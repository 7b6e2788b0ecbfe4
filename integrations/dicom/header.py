"""Read the few attributes the index needs from a spooled file, without decoding pixel data.

Why not `dcmread`: a multi-frame object can be hundreds of MB and encapsulated pixel data of undefined
length would be read into memory. We parse only the elements before pixel data, then walk the pixel data
element's framing (item tags and lengths, seeking past values) to prove the file is complete. A sender
that closes the last fragment early leaves a value that runs past the end of the file: that is caught here
and answered with a failure status instead of being indexed as a good instance.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from integrations.dicom.header_scan import scan_instance_header
from integrations.dicom.instance_header import InstanceHeader, UnreadableDataset

__all__ = ["InstanceHeader", "UnreadableDataset", "read_instance_header", "read_instance_header_with_pydicom"]

_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
# Only these are converted; the others are walked (so framing errors still surface) but not decoded.
_INDEXED_TAGS: list[BaseTag | int] = [
    0x00080005,  # Specific Character Set
    0x00080016,  # SOP Class UID
    0x00080018,  # SOP Instance UID
    0x00080050,  # Accession Number
    0x00080060,  # Modality
    0x00100020,  # Patient ID
    0x00180015,  # Body Part Examined
    0x0020000D,  # Study Instance UID
    0x0020000E,  # Series Instance UID
]
_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def _stop_at_pixels(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def read_instance_header(path: Path) -> InstanceHeader:
    """Parse a Part 10 file's index attributes. Raises UnreadableDataset on anything malformed.

    The direct scan answers for the files we receive day to day; pydicom decides the rest."""
    scanned = scan_instance_header(path)
    if scanned is not None:
        return scanned
    return read_instance_header_with_pydicom(path)


def read_instance_header_with_pydicom(path: Path) -> InstanceHeader:
    """The authoritative (slower) reader: any transfer syntax, character set or odd encoding."""
    size = path.stat().st_size
    try:
        with path.open("rb") as fp:
            ds = read_partial(
                fp, stop_when=_stop_at_pixels, defer_size=64 * 1024, specific_tags=_INDEXED_TAGS
            )
            transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
            header = _header_from(ds, transfer_syntax)
            if transfer_syntax != DeflatedExplicitVRLittleEndian:
                pixel_offset = fp.tell()
                if pixel_offset < size:
                    _check_pixel_framing(fp, size, transfer_syntax, implicit_vr=bool(ds.original_encoding[0]))
    except UnreadableDataset:
        raise
    except (InvalidDicomError, ValueError, KeyError, TypeError, AttributeError, EOFError, OSError) as exc:
        raise UnreadableDataset(f"not a readable DICOM dataset ({type(exc).__name__})") from exc
    except Exception as exc:  # pydicom raises a wide variety of errors on hostile input
        raise UnreadableDataset(f"not a readable DICOM dataset ({type(exc).__name__})") from exc
    return header


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
    if value in (None, ""):
        return None
    text = str(value).strip()
    return text[:limit] or None


def _required_uid(ds: Dataset, keyword: str) -> str:
    value = _text(ds, keyword, 64)
    if not value:
        raise UnreadableDataset(f"required attribute {keyword} is missing or empty")
    return value


def _header_from(ds: Dataset, transfer_syntax: str) -> InstanceHeader:
    return InstanceHeader(
        study_uid=_required_uid(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID", 64) or "",
        sop_instance_uid=_required_uid(ds, "SOPInstanceUID"),
        sop_class_uid=_required_uid(ds, "SOPClassUID"),
        transfer_syntax_uid=transfer_syntax,
        modality=_text(ds, "Modality", 16),
        body_part=_text(ds, "BodyPartExamined", 64),
        patient_id=_text(ds, "PatientID", 64),
        accession_number=_text(ds, "AccessionNumber", 64),
    )


def _check_pixel_framing(fp: BinaryIO, size: int, transfer_syntax: str, *, implicit_vr: bool) -> None:
    """Walk the pixel data element's header and items; every declared length must fit in the file."""
    big_endian = transfer_syntax == "1.2.840.10008.1.2.2"
    endian = ">" if big_endian else "<"
    start = fp.tell()
    head = fp.read(8)
    if len(head) < 8:
        raise UnreadableDataset("pixel data element header is truncated")
    group, element = struct.unpack(f"{endian}HH", head[:4])
    if implicit_vr:
        (length,) = struct.unpack(f"{endian}L", head[4:8])
    elif head[4:6] in _LONG_VRS:
        extra = fp.read(4)
        if len(extra) < 4:
            raise UnreadableDataset("pixel data element header is truncated")
        (length,) = struct.unpack(f"{endian}L", extra)
    else:
        (length,) = struct.unpack(f"{endian}H", head[6:8])
    if ((group << 16) | element) not in _PIXEL_TAGS:
        raise UnreadableDataset("expected pixel data where the header parse stopped")
    if length != _UNDEFINED_LENGTH:
        if fp.tell() + length > size:
            raise UnreadableDataset(f"pixel data declares {length} bytes but the file ends early")
        return
    # Encapsulated: items (FFFE,E000) until the sequence delimiter (FFFE,E0DD); always little endian.
    while True:
        item = fp.read(8)
        if len(item) < 8:
            raise UnreadableDataset("encapsulated pixel data ends without a sequence delimiter")
        item_group, item_element, item_length = struct.unpack("<HHL", item)
        tag = (item_group << 16) | item_element
        if tag == _SEQUENCE_DELIMITER:
            return
        if tag != _ITEM or item_length == _UNDEFINED_LENGTH:
            raise UnreadableDataset(
                f"unexpected tag in encapsulated pixel data at offset {fp.tell() - start}"
            )
        if fp.tell() + item_length > size:
            raise UnreadableDataset("an encapsulated pixel data fragment runs past the end of the file")
        fp.seek(item_length, 1)

"""The Part 10 header written in front of a data set received over the network (PS3.10 Section 7.1).

DIMSE carries only the data set; the spool keeps Part 10 files, so the receiver writes the 128-byte
preamble, "DICM" and the File Meta Information (Explicit VR Little Endian) before streaming the data set's
bytes unchanged behind them.
"""

from __future__ import annotations

import struct

from pydicom.uid import generate_uid

# Ours, derived once from a fixed name so every Veritrace build writes the same one.
IMPLEMENTATION_CLASS_UID = str(generate_uid(entropy_srcs=["veritrace-dicom-gateway"]))
IMPLEMENTATION_VERSION_NAME = "VERITRACE_1"


def _short(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + struct.pack("<H", len(value)) + value


def _uid(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", errors="replace")
    return raw + b" " if len(raw) % 2 else raw


def part10_header(
    *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str
) -> bytes:
    """Preamble, prefix and group 0002 for one instance; the data set follows directly."""
    elements = (
        struct.pack("<HH", 0x0002, 0x0001)
        + b"OB\x00\x00"
        + struct.pack("<L", 2)
        + b"\x00\x01"
        + _short(0x00020002, b"UI", _uid(sop_class_uid))
        + _short(0x00020003, b"UI", _uid(sop_instance_uid))
        + _short(0x00020010, b"UI", _uid(transfer_syntax_uid))
        + _short(0x00020012, b"UI", _uid(IMPLEMENTATION_CLASS_UID))
        + _short(0x00020013, b"SH", _text(IMPLEMENTATION_VERSION_NAME))
    )
    if source_ae:
        elements += _short(0x00020016, b"AE", _text(source_ae[:16]))
    group_length = _short(0x00020000, b"UL", struct.pack("<L", len(elements)))
    return bytes(128) + b"DICM" + group_length + elements

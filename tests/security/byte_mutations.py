"""Hypothesis strategies that mutate real encodings the way a broken or hostile peer does.

Shared by the DICOM fuzzers (protocol decoders, instance header reader, the live SCP). A mutation is one
of: bit flip, byte set (favouring NUL, space, ".", DEL and the non-ASCII edges), truncation, inserted
bytes, a 2- or 4-byte field set to an edge length at any offset, or, where the seed says where its length
fields and identifier values are, one of those fields set to an edge length or one byte of such a value
replaced. Offsets are drawn mostly from the first `focus` bytes,
where the headers are, since a flip in pixel data tests nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hypothesis import strategies as st

# The values fuzzers favour for a single byte: NUL, space, ".", DEL and the first and last non-ASCII.
INTERESTING_BYTES = [0x00, 0x20, 0x2E, 0x7F, 0x80, 0xFF]
# Inside a text value: also the backslash (DICOM's value separator) and a multi-byte UTF-8 lead.
VALUE_BYTES = [*INTERESTING_BYTES, 0x5C, 0xC3]
EDGE_LENGTHS = [
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    0x7F,
    0xFF,
    0x7FFF,
    0xFFFE,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0xFFFFFFFE,
]
EDGE_LENGTHS_32 = [*EDGE_LENGTHS, 0xFFFFFFFF]  # 0xFFFFFFFF: "undefined length" in DICOM


@dataclass(frozen=True)
class Seed:
    """Valid bytes, where its length fields are (offset, size in bytes, big endian), and the byte ranges
    (start, end) of the values the code under test reads most closely (identifiers, UIDs)."""

    data: bytes
    length_fields: tuple[tuple[int, int, bool], ...] = field(default_factory=tuple)
    value_ranges: tuple[tuple[int, int], ...] = field(default_factory=tuple)


def _set_length(data: bytearray, at: int, size: int, big: bool, value: int) -> None:
    if size == 2:
        data[at : at + 2] = struct.pack(">H" if big else "<H", value & 0xFFFF)
    else:
        data[at : at + 4] = struct.pack(">L" if big else "<L", value)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[Seed], *, focus: int = 4096, max_mutations: int = 4) -> bytes:
    """A seed after one to `max_mutations` mutations."""
    seed = draw(st.sampled_from(seeds))
    data = bytearray(seed.data)
    for _ in range(draw(st.integers(1, max_mutations))):
        kinds = ["flip", "set", "truncate", "insert", "length16", "length32"]
        kinds += ["field"] if seed.length_fields else []
        kinds += ["value"] if seed.value_ranges else []
        kind = draw(st.sampled_from(kinds))
        last = max(len(data) - 1, 0)
        at = draw(st.integers(0, min(last, focus)) | st.integers(0, last))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.sampled_from(INTERESTING_BYTES) | st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "length16" and at + 2 <= len(data):
            _set_length(data, at, 2, draw(st.booleans()), draw(st.sampled_from(EDGE_LENGTHS)))
        elif kind == "length32" and at + 4 <= len(data):
            _set_length(data, at, 4, draw(st.booleans()), draw(st.sampled_from(EDGE_LENGTHS_32)))
        elif kind == "field":
            offset, size, big = draw(st.sampled_from(seed.length_fields))
            if offset + size <= len(data):
                values = EDGE_LENGTHS_32 if size == 4 else [v for v in EDGE_LENGTHS if v <= 0xFFFF]
                _set_length(data, offset, size, big, draw(st.sampled_from(values)))
        elif kind == "value":
            start, end = draw(st.sampled_from(seed.value_ranges))
            if start < end <= len(data):
                data[draw(st.integers(start, end - 1))] = draw(st.sampled_from(VALUE_BYTES))
    return bytes(data)

"""DIMSE command sets (PS3.7 Section 9.3 and Annex E): decode a request, encode a response.

A command set is always Implicit VR Little Endian, group 0000, elements in ascending tag order, led by
its group length. Only the fields an SCP of C-STORE and C-ECHO reads or writes are named.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
NO_DATA_SET = 0x0101  # (0000,0800) Command Data Set Type: no data set follows (PS3.7 E.1)
STATUS_UNRECOGNISED_OPERATION = 0x0211  # PS3.7 Annex C.5.6

_AFFECTED_SOP_CLASS = 0x00000002
_COMMAND_FIELD = 0x00000100
_MESSAGE_ID = 0x00000110
_MESSAGE_ID_RESPONDED_TO = 0x00000120
_DATA_SET_TYPE = 0x00000800
_STATUS = 0x00000900
_AFFECTED_SOP_INSTANCE = 0x00001000
_ELEMENT = struct.Struct("<HHL")


class CommandError(ValueError):
    """A command set that cannot be decoded; the association is aborted."""


@dataclass(frozen=True)
class Command:
    command_field: int
    message_id: int
    has_data_set: bool
    affected_sop_class: str | None
    affected_sop_instance: str | None


def decode_command(raw: bytes) -> Command:
    """Requires a complete command set. Raises CommandError when an element does not fit."""
    fields: dict[int, bytes] = {}
    offset = 0
    while offset < len(raw):
        if offset + 8 > len(raw):
            raise CommandError("command element header runs past the command set")
        group, element, length = _ELEMENT.unpack_from(raw, offset)
        end = offset + 8 + length
        if end > len(raw):
            raise CommandError("command element runs past the command set")
        fields[(group << 16) | element] = raw[offset + 8 : end]
        offset = end
    if _COMMAND_FIELD not in fields or _MESSAGE_ID not in fields:
        raise CommandError("command set without Command Field or Message ID")
    data_set_type = _us(fields.get(_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET)))
    return Command(
        command_field=_us(fields[_COMMAND_FIELD]),
        message_id=_us(fields[_MESSAGE_ID]),
        has_data_set=data_set_type != NO_DATA_SET,
        affected_sop_class=_ui(fields.get(_AFFECTED_SOP_CLASS)),
        affected_sop_instance=_ui(fields.get(_AFFECTED_SOP_INSTANCE)),
    )


def _us(value: bytes) -> int:
    if len(value) != 2:
        raise CommandError("US command element is not 2 bytes")
    return int(struct.unpack("<H", value)[0])


def _ui(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        text = value.rstrip(b"\x00 ").decode("ascii")
    except UnicodeDecodeError as exc:
        # A UID is digits and dots (PS3.5 9.1); one that is not ASCII could not be echoed in the response.
        raise CommandError("UI command element is not ASCII") from exc
    return text or None


def _element(tag: int, value: bytes) -> bytes:
    return _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def encode_response(request: Command, status: int) -> bytes:
    """The response to `request` (its command field with the response bit), without a data set."""
    body = b""
    if request.affected_sop_class:
        body += _element(_AFFECTED_SOP_CLASS, _uid_value(request.affected_sop_class))
    body += _element(_COMMAND_FIELD, struct.pack("<H", request.command_field | 0x8000))
    body += _element(_MESSAGE_ID_RESPONDED_TO, struct.pack("<H", request.message_id))
    body += _element(_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET))
    body += _element(_STATUS, struct.pack("<H", status))
    if request.affected_sop_instance:
        body += _element(_AFFECTED_SOP_INSTANCE, _uid_value(request.affected_sop_instance))
    return _element(0x00000000, struct.pack("<L", len(body))) + body

"""DICOM Upper Layer PDUs (PS3.8 Section 9.3): the few an association acceptor reads and writes.

Why our own: pynetdicom's reactor threads poll with millisecond sleeps, which bounded a CT study of small
instances to about a fifth of dcmtk's rate. These are plain functions over bytes; the association loop in
`association.py` does the I/O. Only what a Storage SCP needs is decoded; every other item is skipped by its
length, as PS3.8 requires of unknown items.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

# PDU types, PS3.8 Table 9-11 ff.
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 Annex A.2.1, the DICOM Application Context Name

# Presentation context results, PS3.8 Table 9-18.
PC_ACCEPTANCE = 0
PC_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
PC_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 Table 9-21.
RJ_NO_REASON = (0x01, 0x01, 0x01)
RJ_APPLICATION_CONTEXT_NOT_SUPPORTED = (0x01, 0x01, 0x02)
RJ_CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
RJ_CALLED_AE_NOT_RECOGNISED = (0x01, 0x01, 0x07)
RJ_PROTOCOL_VERSION_NOT_SUPPORTED = (0x01, 0x02, 0x02)
RJ_LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)

# A-ABORT source / reason, PS3.8 Table 9-26.
ABORT_SERVICE_PROVIDER = 0x02
ABORT_UNRECOGNISED_PDU = 0x01
ABORT_UNEXPECTED_PDU = 0x02
ABORT_INVALID_PARAMETER = 0x06

_HEADER = struct.Struct(">BxL")


class PduError(ValueError):
    """A PDU that does not follow PS3.8; the association is aborted. Messages carry no PDU contents."""


@dataclass(frozen=True)
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class AssociateRequest:
    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str
    contexts: tuple[ProposedContext, ...]
    # 0 means "no limit" (PS3.8 D.1.1).
    max_pdu_length: int = 0
    implementation_class_uid: str = ""


@dataclass(frozen=True)
class AcceptedContext:
    context_id: int
    result: int
    transfer_syntax: str


@dataclass(frozen=True)
class Pdv:
    """One Presentation Data Value item of a P-DATA-TF PDU (PS3.8 Section 9.3.5.1, Annex E.2)."""

    context_id: int
    is_command: bool
    is_last: bool
    data: memoryview


@dataclass
class AssociateAccept:
    called_ae: bytes
    calling_ae: bytes
    contexts: list[AcceptedContext] = field(default_factory=list)
    max_pdu_length: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""


def read_header(header: bytes) -> tuple[int, int]:
    """(PDU type, length of what follows the 6-byte header)."""
    pdu_type, length = _HEADER.unpack(header)
    return pdu_type, length


def _uid(raw: bytes | memoryview) -> str:
    """UIDs are digits and dots (PS3.5 9.1); a non-ASCII one could not even be echoed back in the AC."""
    try:
        return bytes(raw).rstrip(b"\x00 ").decode("ascii")
    except UnicodeDecodeError as exc:
        raise PduError("UID item is not ASCII") from exc


def _ae(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").strip()


def _items(body: memoryview, start: int) -> Iterator[tuple[int, memoryview]]:
    """Variable items: type (1), reserved (1), length (2, big endian), value."""
    offset = start
    while offset < len(body):
        if offset + 4 > len(body):
            raise PduError("variable item header runs past the PDU")
        item_type, item_length = body[offset], struct.unpack_from(">H", body, offset + 2)[0]
        end = offset + 4 + item_length
        if end > len(body):
            raise PduError("variable item runs past the PDU")
        yield item_type, body[offset + 4 : end]
        offset = end


def parse_associate_rq(body: bytes) -> AssociateRequest:
    """Requires the body after the 6-byte header. Raises PduError on anything malformed."""
    if len(body) < 68:
        raise PduError("A-ASSOCIATE-RQ shorter than its fixed fields")
    view = memoryview(body)
    (protocol_version,) = struct.unpack_from(">H", view, 0)
    called, calling = _ae(body[4:20]), _ae(body[20:36])
    application_context = ""
    contexts: list[ProposedContext] = []
    max_pdu = 0
    implementation_uid = ""
    for item_type, value in _items(view, 68):
        if item_type == 0x10:
            application_context = _uid(value)
        elif item_type == 0x20:
            contexts.append(_proposed_context(value))
        elif item_type == 0x50:
            for sub_type, sub_value in _items(value, 0):
                if sub_type == 0x51 and len(sub_value) == 4:
                    (max_pdu,) = struct.unpack(">L", sub_value)
                elif sub_type == 0x52:
                    implementation_uid = _uid(sub_value)
    if not application_context:
        raise PduError("A-ASSOCIATE-RQ without an application context item")
    return AssociateRequest(
        protocol_version, called, calling, application_context, tuple(contexts), max_pdu, implementation_uid
    )


def _proposed_context(value: memoryview) -> ProposedContext:
    if len(value) < 4:
        raise PduError("presentation context item shorter than its fixed fields")
    context_id = value[0]
    abstract = ""
    transfers: list[str] = []
    for sub_type, sub_value in _items(value, 4):
        if sub_type == 0x30:
            abstract = _uid(sub_value)
        elif sub_type == 0x40:
            transfers.append(_uid(sub_value))
    if not abstract or not transfers:
        raise PduError("presentation context without abstract syntax or transfer syntax")
    return ProposedContext(context_id, abstract, tuple(transfers))


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return _HEADER.pack(pdu_type, len(body)) + body


def _even(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def build_associate_ac(accept: AssociateAccept) -> bytes:
    """A-ASSOCIATE-AC (PS3.8 Section 9.3.3): the called/calling fields echo the request's, as required."""
    items = _item(0x10, APPLICATION_CONTEXT.encode("ascii"))
    for context in accept.contexts:
        transfer = _item(0x40, context.transfer_syntax.encode("ascii"))
        items += _item(0x21, bytes([context.context_id, 0, context.result, 0]) + transfer)
    user = _item(0x51, struct.pack(">L", accept.max_pdu_length))
    user += _item(0x52, accept.implementation_class_uid.encode("ascii"))
    if accept.implementation_version_name:
        user += _item(0x55, accept.implementation_version_name.encode("ascii"))
    items += _item(0x50, user)
    fixed = struct.pack(">HH", 1, 0) + accept.called_ae + accept.calling_ae + bytes(32)
    return _pdu(A_ASSOCIATE_AC, fixed + items)


def build_associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(A_ASSOCIATE_RJ, bytes([0, result, source, reason]))


def build_release_rp() -> bytes:
    return _pdu(A_RELEASE_RP, bytes(4))


def build_abort(source: int = ABORT_SERVICE_PROVIDER, reason: int = 0) -> bytes:
    return _pdu(A_ABORT, bytes([0, 0, source, reason]))


def build_p_data(context_id: int, payload: bytes, *, is_command: bool, max_pdu_length: int) -> bytes:
    """One or more P-DATA-TF PDUs carrying `payload` as fragments no longer than the peer accepts."""
    limit = max_pdu_length - 6 if max_pdu_length else len(payload) or 1
    limit = max(limit, 1)
    out = bytearray()
    for start in range(0, max(len(payload), 1), limit):
        chunk = payload[start : start + limit]
        last = start + limit >= len(payload)
        header = (0x01 if is_command else 0x00) | (0x02 if last else 0x00)
        pdv = struct.pack(">LB", len(chunk) + 2, context_id) + bytes([header]) + chunk
        out += _pdu(P_DATA_TF, pdv)
    return bytes(out)


PDV_HEADER_LENGTH = 6  # item length (4), presentation context id (1), message control header (1)


@dataclass(frozen=True)
class PdvHeader:
    """A PDV item's header: what follows it is `data_length` bytes of command or data set."""

    context_id: int
    is_command: bool
    is_last: bool
    data_length: int

    @property
    def item_length(self) -> int:
        return PDV_HEADER_LENGTH + self.data_length


def parse_pdv_header(raw: bytes | memoryview, room: int) -> PdvHeader:
    """The PDV item header at the start of `raw`, whose item must fit the `room` bytes left in its PDU.

    Raises PduError when the header or the item runs past the PDU.
    """
    if room < PDV_HEADER_LENGTH or len(raw) < PDV_HEADER_LENGTH:
        raise PduError("PDV item header runs past the PDU")
    (item_length,) = struct.unpack_from(">L", raw, 0)
    if item_length < 2 or 4 + item_length > room:
        raise PduError("PDV item length does not fit its PDU")
    control = raw[5]
    return PdvHeader(raw[4], bool(control & 0x01), bool(control & 0x02), item_length - 2)


def iter_pdvs(body: memoryview) -> Iterator[Pdv]:
    """The PDV items of a P-DATA-TF body. Raises PduError when an item's length does not fit."""
    offset = 0
    while offset < len(body):
        header = parse_pdv_header(body[offset : offset + PDV_HEADER_LENGTH], len(body) - offset)
        start = offset + PDV_HEADER_LENGTH
        yield Pdv(
            header.context_id, header.is_command, header.is_last, body[start : start + header.data_length]
        )
        offset += header.item_length


def ae_field(title: str) -> bytes:
    """A 16-byte AE title field, space padded."""
    return title.encode("ascii", errors="replace")[:16].ljust(16, b" ")

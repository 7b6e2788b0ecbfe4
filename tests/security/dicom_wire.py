"""A raw DICOM peer for the fuzzers: PDUs and DIMSE command sets written and read byte by byte.

pynetdicom refuses to send what is malformed, and a fuzzer must; so the requests here are encoded with
pydicom and pynetdicom's PDU classes (independent of the acceptor under test) and then sent, mutated or
not, over a plain socket. Replies are read until the acceptor closes the connection.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator, read_dataset, read_file_meta_info
from pydicom.filewriter import write_dataset
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.transport import AddressInformation

from integrations.dicom import pdu
from tests.security.byte_mutations import Seed

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
# What the index reads (integrations/dicom/header.py): SOP class and instance, accession number,
# modality, patient id, body part, study and series.
INDEXED_TAGS = {
    0x00080016,
    0x00080018,
    0x00080050,
    0x00080060,
    0x00100020,
    0x00180015,
    0x0020000D,
    0x0020000E,
}
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def associate_rq(
    contexts: Sequence[tuple[str, Sequence[str]]], *, calling: str = "FUZZER", max_pdu: int = 16382
) -> bytes:
    """A complete A-ASSOCIATE-RQ PDU; context ids 1, 3, 5... in the order given."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = pdu.APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = "VERITRACE"
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 1)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 2)
    built = [build_context(abstract, list(syntaxes)) for abstract, syntaxes in contexts]
    for number, context in enumerate(built):
        context.context_id = 2 * number + 1
    primitive.presentation_context_definition_list = built
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_pdu
    primitive.user_information = [maximum]
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    return bytes(request.encode())


def command_elements(**elements: object) -> bytes:
    """These command elements as PS3.7 encodes them (implicit VR little endian), without a group length."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = True, True
    write_dataset(buffer, ds)
    return buffer.getvalue()


def command_set(**elements: object) -> bytes:
    """A DIMSE command set as PS3.7 encodes it: implicit VR little endian, led by its group length."""
    body = command_elements(**elements)
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def c_echo_rq(message_id: int = 1) -> bytes:
    return command_set(AffectedSOPClassUID=VERIFICATION, CommandField=0x0030, MessageID=message_id,
                       CommandDataSetType=0x0101)  # fmt: skip


def c_store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    return command_set(
        AffectedSOPClassUID=sop_class,
        CommandField=0x0001,
        MessageID=message_id,
        Priority=0,
        CommandDataSetType=0x0000,
        AffectedSOPInstanceUID=sop_instance,
    )


def p_data(context_id: int, payload: bytes, *, is_command: bool, max_pdu: int = 16382) -> bytes:
    return pdu.build_p_data(context_id, payload, is_command=is_command, max_pdu_length=max_pdu)


RELEASE_RQ = struct.pack(">BxL", pdu.A_RELEASE_RQ, 4) + bytes(4)


@dataclass(frozen=True)
class Exchange:
    """What the acceptor sent back on one connection, parsed."""

    pdu_types: list[int]
    statuses: list[int]
    # Bytes after the last whole PDU: the acceptor never sends half a PDU.
    trailing: bytes


def exchange(port: int, data: bytes, *, timeout_s: float = 30) -> Exchange:
    """Send `data`, half-close, and read every reply until the acceptor closes the connection.

    The half-close means the acceptor sees the end of our bytes at once instead of waiting for its
    network timeout; it must then finish (answer, abort) and close.
    """
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the acceptor may abort and close before it has read all of a hostile stream
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return parse_replies(bytes(received))


def parse_replies(raw: bytes) -> Exchange:
    types: list[int] = []
    statuses: list[int] = []
    command = bytearray()
    offset = 0
    while offset + 6 <= len(raw):
        pdu_type, length = pdu.read_header(raw[offset : offset + 6])
        if offset + 6 + length > len(raw):
            break
        types.append(pdu_type)
        if pdu_type == pdu.P_DATA_TF:
            for pdv in pdu.iter_pdvs(memoryview(raw[offset + 6 : offset + 6 + length])):
                assert pdv.is_command, "the acceptor only sends command sets"
                command += pdv.data
                if pdv.is_last:
                    response = read_dataset(
                        BytesIO(bytes(command)), is_implicit_VR=True, is_little_endian=True
                    )
                    statuses.append(int(response.Status))
                    command.clear()
        offset += 6 + length
    return Exchange(types, statuses, raw[offset:])


@dataclass(frozen=True)
class InstanceSeed:
    """A Part 10 file as a sender would put it on the wire: its data set bytes and identifiers."""

    name: str
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    seed: Seed


def instance_seed(path: Path) -> InstanceSeed:
    """Split a Part 10 file after its File Meta Information; record the data set's length fields."""
    raw = path.read_bytes()
    meta = read_file_meta_info(path)
    start = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    syntax = str(meta.TransferSyntaxUID)
    lengths, values = _fields(raw[start:], syntax)
    return InstanceSeed(
        name=path.name,
        sop_class=str(meta.MediaStorageSOPClassUID),
        sop_instance=str(meta.MediaStorageSOPInstanceUID),
        transfer_syntax=syntax,
        seed=Seed(raw[start:], tuple(lengths), tuple(values)),
    )


def _fields(data: bytes, syntax: str) -> tuple[list[tuple[int, int, bool]], list[tuple[int, int]]]:
    """(offset, size, big endian) of each top-level element's length field in a data set, and the value
    ranges of the attributes the index reads."""
    if syntax == DEFLATED:
        return [], []
    implicit, big = syntax == IMPLICIT_LE, syntax == EXPLICIT_BE
    lengths, values = [], []
    for element in data_element_generator(BytesIO(data), implicit, not big, defer_size=0):
        if not isinstance(element, RawDataElement):  # undefined length (sequences, encapsulated pixels)
            continue
        size = 4 if implicit or element.VR in _LONG_VRS else 2
        lengths.append((element.value_tell - size, size, big))
        if int(element.tag) in INDEXED_TAGS and element.length:
            values.append((element.value_tell, element.value_tell + element.length))
    return lengths, values

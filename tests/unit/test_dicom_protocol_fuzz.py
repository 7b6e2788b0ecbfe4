"""Fuzzing the DICOM upper-layer and DIMSE decoders (hypothesis): arbitrary and mutated bytes.

`pdu.parse_associate_rq`, `pdu.iter_pdvs` and `dimse_command.decode_command` read bytes straight off the
network. Whatever arrives, each may only return a value or raise its module's protocol error (PduError,
CommandError), which the association turns into an A-ABORT. What they return must also be usable by the
code that answers it (A-ASSOCIATE-AC, the DIMSE response), since that runs on the same bytes.

Seeds are real encodings (pynetdicom's A-ASSOCIATE-RQ, pydicom's command sets, our P-DATA-TF); the
mutations are the ones a broken or hostile peer produces: bit flips, truncation, inserted bytes and
length fields set to their edge values. Example counts are small and the runs derandomized, so this stays
a few seconds in CI and fails the same way on every machine.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.filereader import read_dataset

from integrations.dicom import pdu
from integrations.dicom.association import negotiate_context, rejection_for
from integrations.dicom.config import DicomConfig
from integrations.dicom.dimse_command import (
    C_ECHO_RQ,
    C_STORE_RQ,
    CommandError,
    decode_command,
    encode_response,
)
from tests.security.byte_mutations import Seed, mutated
from tests.security.dicom_wire import associate_rq
from tests.security.dicom_wire import command_elements as command_set

FUZZ = settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CT = "1.2.840.10008.5.1.4.1.1.2"
ACCEPTOR = DicomConfig(spool_dir=Path("spool-unused"), port=0)


def associate_rq_body() -> bytes:
    """An A-ASSOCIATE-RQ body (after the 6-byte header) as pynetdicom encodes it."""
    contexts = [
        (CT, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]),
        (
            "1.2.840.10008.1.1",
            ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"],
        ),
        # Refused contexts too: the AC echoes their first transfer syntax (PS3.8 9.3.3.2).
        ("1.3.6.1.4.1.99999.1.1", ["1.2.3.999"]),
        ("1.2.840.10008.5.1.4.1.2.1.1", ["1.2.840.10008.1.2.1"]),  # Q/R FIND: not storage
        (CT, ["1.2.840.10008.1.2.4.999", "1.2.3.4.5.6.7.8"]),
    ]
    return associate_rq(contexts, calling="PACS")[6:]


ASSOCIATE_RQ = associate_rq_body()
COMMANDS = [
    command_set(
        AffectedSOPClassUID=CT,
        CommandField=C_STORE_RQ,
        MessageID=7,
        Priority=0,
        CommandDataSetType=0x0000,
        AffectedSOPInstanceUID="1.2.3.4.5",
    ),
    command_set(AffectedSOPClassUID="1.2.840.10008.1.1", CommandField=C_ECHO_RQ, MessageID=1),
]
P_DATA_BODIES = [
    pdu.build_p_data(1, COMMANDS[0], is_command=True, max_pdu_length=0)[6:],
    pdu.build_p_data(3, bytes(range(200)), is_command=False, max_pdu_length=0)[6:],
]


def _check_associate_request(raw: bytes) -> None:
    try:
        request = pdu.parse_associate_rq(raw)
    except pdu.PduError:
        return
    assert request.application_context
    assert all(c.abstract_syntax and c.transfer_syntaxes for c in request.contexts)
    # What the acceptor does next with a parsed request must not fail on it either.
    rejection_for(request, ACCEPTOR)
    accept = pdu.AssociateAccept(
        called_ae=raw[4:20],
        calling_ae=raw[20:36],
        contexts=[negotiate_context(context) for context in request.contexts],
        max_pdu_length=16384,
        implementation_class_uid="1.2.3.4",
    )
    answer = pdu.build_associate_ac(accept)
    assert pdu.read_header(answer[:6]) == (pdu.A_ASSOCIATE_AC, len(answer) - 6)


def test_the_seed_associate_request_parses() -> None:
    request = pdu.parse_associate_rq(ASSOCIATE_RQ)
    assert [c.context_id for c in request.contexts] == [1, 3, 5, 7, 9]


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes_as_associate_request(raw: bytes) -> None:
    _check_associate_request(raw)


def _with_byte(raw: bytes, marker: bytes, value: int) -> bytes:
    """`raw` with the first byte of `marker` replaced by `value`: the fuzzer's findings, pinned."""
    at = raw.index(marker)
    return raw[:at] + bytes([value]) + raw[at + 1 :]


@FUZZ
@example(_with_byte(ASSOCIATE_RQ, b"1.2.3.999", 0xB1))  # a refused syntax the AC must echo, not ASCII
@given(mutated([Seed(ASSOCIATE_RQ)]))
def test_mutated_associate_requests(raw: bytes) -> None:
    _check_associate_request(raw)


@FUZZ
@given(st.binary(min_size=6, max_size=6))
def test_any_six_bytes_are_a_pdu_header(raw: bytes) -> None:
    pdu_type, length = pdu.read_header(raw)
    assert 0 <= pdu_type <= 0xFF and 0 <= length <= 0xFFFFFFFF


def _check_pdvs(raw: bytes) -> None:
    try:
        pdvs = list(pdu.iter_pdvs(memoryview(raw)))
    except pdu.PduError:
        return
    # Every PDV item is 4 length bytes, context id, control header and its data: nothing is lost or
    # invented, so the data lengths account for the body exactly.
    assert sum(6 + len(p.data) for p in pdvs) == len(raw)


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_as_p_data(raw: bytes) -> None:
    _check_pdvs(raw)


@FUZZ
@given(mutated([Seed(body) for body in P_DATA_BODIES]))
def test_mutated_p_data(raw: bytes) -> None:
    _check_pdvs(raw)


def _check_command(raw: bytes) -> None:
    try:
        command = decode_command(raw)
    except CommandError:
        return
    # The SCP answers every command it decoded; the answer must encode and decode back.
    response = read_dataset(
        BytesIO(encode_response(command, 0xC000)), is_implicit_VR=True, is_little_endian=True
    )
    assert response.CommandField == command.command_field | 0x8000
    assert response.MessageIDBeingRespondedTo == command.message_id and response.Status == 0xC000
    assert response.get("AffectedSOPInstanceUID") == command.affected_sop_instance


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_command_set(raw: bytes) -> None:
    _check_command(raw)


@FUZZ
@example(_with_byte(COMMANDS[0], b"1.2.3.4.5", 0xFF))  # a UID the response must echo, not ASCII
@given(mutated([Seed(command) for command in COMMANDS]))
def test_mutated_command_sets(raw: bytes) -> None:
    _check_command(raw)

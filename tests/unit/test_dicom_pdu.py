"""Upper-layer PDUs and DIMSE command sets: our codec against pydicom's encoder and PS3.8 byte layouts."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from pydicom.filereader import read_dataset
from pynetdicom.pdu import A_ASSOCIATE_AC

from integrations.dicom import pdu
from integrations.dicom.association import is_acceptable_abstract_syntax, negotiate_context
from integrations.dicom.dimse_command import C_STORE_RQ, CommandError, decode_command, encode_response
from tests.security.dicom_wire import associate_rq
from tests.security.dicom_wire import command_elements as command_set

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
VERIFICATION = "1.2.840.10008.1.1"
# What pynetdicom's build_context proposes when not told (implicit, explicit, deflated, big endian).
PYNETDICOM_DEFAULT_SYNTAXES = [IMPLICIT_LE, EXPLICIT_LE, "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"]


def test_parses_an_associate_request_encoded_by_pynetdicom() -> None:
    raw = associate_rq(
        [(CT, [EXPLICIT_LE, IMPLICIT_LE]), (VERIFICATION, PYNETDICOM_DEFAULT_SYNTAXES)], calling="PACS"
    )
    pdu_type, length = pdu.read_header(raw[:6])
    request = pdu.parse_associate_rq(raw[6:])

    assert (pdu_type, length) == (pdu.A_ASSOCIATE_RQ, len(raw) - 6)
    assert (request.called_ae, request.calling_ae, request.max_pdu_length) == ("VERITRACE", "PACS", 16382)
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in request.contexts] == [
        (1, CT, (EXPLICIT_LE, IMPLICIT_LE)),
        (3, "1.2.840.10008.1.1", (IMPLICIT_LE, EXPLICIT_LE, "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")),
    ]


def test_our_associate_accept_decodes_in_pynetdicom() -> None:
    accept = pdu.AssociateAccept(
        called_ae=pdu.ae_field("VERITRACE"),
        calling_ae=pdu.ae_field("PACS"),
        contexts=[
            pdu.AcceptedContext(1, pdu.PC_ACCEPTANCE, EXPLICIT_LE),
            pdu.AcceptedContext(3, pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, IMPLICIT_LE),
        ],
        max_pdu_length=4 * 1024 * 1024,
        implementation_class_uid="1.2.3.4",
        implementation_version_name="VERITRACE_1",
    )
    decoded = A_ASSOCIATE_AC()
    decoded.decode(pdu.build_associate_ac(accept))
    primitive = decoded.to_primitive()

    results = [
        (c.context_id, c.result, c.transfer_syntax[0])
        for c in primitive.presentation_context_definition_results_list
    ]
    assert results == [(1, 0, EXPLICIT_LE), (3, 3, IMPLICIT_LE)]
    assert primitive.maximum_length_received == 4 * 1024 * 1024
    assert primitive.implementation_class_uid == "1.2.3.4"


@pytest.mark.parametrize(
    ("mutation", "raw"),
    [
        ("truncated-fixed-fields", b"\x00\x01" + b"\x00" * 30),
        ("item-length-past-end", b"\x00\x01\x00\x00" + b" " * 64 + b"\x10\x00\x00\xff" + b"1.2"),
        ("no-application-context", b"\x00\x01\x00\x00" + b" " * 64),
    ],
)
def test_malformed_associate_requests_raise(mutation: str, raw: bytes) -> None:
    with pytest.raises(pdu.PduError):
        pdu.parse_associate_rq(raw)


def test_pdvs_split_and_rejoin() -> None:
    payload = bytes(range(256)) * 40
    stream = pdu.build_p_data(5, payload, is_command=False, max_pdu_length=1000)
    rebuilt = b""
    flags = []
    offset = 0
    while offset < len(stream):
        pdu_type, length = pdu.read_header(stream[offset : offset + 6])
        assert pdu_type == pdu.P_DATA_TF and length <= 1000
        for pdv in pdu.iter_pdvs(memoryview(stream[offset + 6 : offset + 6 + length])):
            assert pdv.context_id == 5 and not pdv.is_command
            rebuilt += bytes(pdv.data)
            flags.append(pdv.is_last)
        offset += 6 + length
    assert rebuilt == payload
    assert flags[-1] and not any(flags[:-1])


def test_pdv_whose_length_overruns_its_pdu_raises() -> None:
    with pytest.raises(pdu.PduError):
        list(pdu.iter_pdvs(memoryview(struct.pack(">LBB", 50, 1, 3) + b"x" * 10)))


def test_decodes_a_c_store_request_and_encodes_its_response() -> None:
    raw = command_set(
        AffectedSOPClassUID=CT,
        CommandField=C_STORE_RQ,
        MessageID=7,
        Priority=0,
        CommandDataSetType=0x0000,
        AffectedSOPInstanceUID="1.2.3.4.5",
    )
    request = decode_command(raw)
    assert (request.command_field, request.message_id, request.has_data_set) == (C_STORE_RQ, 7, True)
    assert (request.affected_sop_class, request.affected_sop_instance) == (CT, "1.2.3.4.5")

    response = read_dataset(
        BytesIO(encode_response(request, 0xA700)), is_implicit_VR=True, is_little_endian=True
    )
    assert response.CommandField == 0x8001 and response.MessageIDBeingRespondedTo == 7
    assert response.Status == 0xA700 and response.CommandDataSetType == 0x0101
    assert response.AffectedSOPInstanceUID == "1.2.3.4.5" and response.AffectedSOPClassUID == CT
    assert response.CommandGroupLength == len(encode_response(request, 0xA700)) - 12


def test_command_element_running_past_the_end_raises() -> None:
    with pytest.raises(CommandError):
        decode_command(struct.pack("<HHL", 0, 0x0100, 20) + b"\x01\x00")


@pytest.mark.parametrize(
    ("uid", "acceptable"),
    [
        ("1.2.840.10008.1.1", True),  # Verification
        (CT, True),
        ("1.2.840.10008.5.1.4.1.1.88.33", True),  # Comprehensive SR
        ("1.3.6.1.4.1.99999.1.1", True),  # a private SOP class: stored as received
        ("1.2.840.10008.5.1.4.1.2.1.1", False),  # Patient Root Q/R FIND: not a storage service
        ("1.2.840.10008.1.20.1", False),  # Storage Commitment Push
    ],
)
def test_which_abstract_syntaxes_are_accepted(uid: str, acceptable: bool) -> None:
    assert is_acceptable_abstract_syntax(uid) is acceptable


def test_first_known_transfer_syntax_wins_and_unknown_only_is_refused() -> None:
    chosen = negotiate_context(pdu.ProposedContext(1, CT, ("1.2.840.10008.1.2.4.50", EXPLICIT_LE)))
    refused = negotiate_context(pdu.ProposedContext(3, CT, ("1.2.3.999",)))
    assert (chosen.result, chosen.transfer_syntax) == (pdu.PC_ACCEPTANCE, "1.2.840.10008.1.2.4.50")
    assert refused.result == pdu.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED

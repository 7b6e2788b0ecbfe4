"""Association policy of our own acceptor over real sockets: TLS, mutual TLS, the association limit,
several called AE titles, and per-context negotiation. pynetdicom (and dcmtk) are the peers."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dicom_support import DicomStore, make_dicom_store  # type: ignore[import-not-found]
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    Verification,
)
from sqlalchemy import select

from integrations.dicom import pdu
from integrations.dicom.config import DicomConfig
from integrations.dicom.scp import StorageScp
from integrations.dicom.synthetic import make_image
from integrations.store.models import Instance
from tests.security import dicom_wire
from tests.tls_support import self_signed_certificate


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DicomStore]:
    made = make_dicom_store(tmp_path)
    yield made
    made.engine.dispose()


def start(tmp_path: Path, store: DicomStore, **overrides: Any) -> StorageScp:
    config = DicomConfig(spool_dir=tmp_path / "spool", port=0, min_free_bytes=0, fsync=False, **overrides)
    scp = StorageScp(config, store.sessions, store.ledger)
    scp.start()
    return scp


def scu(calling: str = "PACS") -> AE:
    ae = AE(calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def self_signed(folder: Path) -> tuple[Path, Path]:
    return self_signed_certificate(folder)


def client_context(cert: Path, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    if key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def test_tls_store_and_plain_tcp_refused(tmp_path: Path, store: DicomStore) -> None:
    cert, key = self_signed(tmp_path)
    scp = start(tmp_path, store, tls_cert_file=cert, tls_key_file=key)
    try:
        plain = scu().associate("127.0.0.1", scp.port, ae_title="VERITRACE")
        assert not plain.is_established
        secure = scu().associate(
            "127.0.0.1", scp.port, ae_title="VERITRACE", tls_args=(client_context(cert, None), "127.0.0.1")
        )
        assert secure.is_established
        assert secure.send_c_store(make_image(study_uid=generate_uid())).Status == 0x0000
        secure.release()
    finally:
        scp.stop()
    with store.sessions() as session:
        assert len(session.execute(select(Instance)).all()) == 1


def test_mutual_tls_needs_a_client_certificate(tmp_path: Path, store: DicomStore) -> None:
    cert, key = self_signed(tmp_path)
    scp = start(tmp_path, store, tls_cert_file=cert, tls_key_file=key, tls_ca_file=cert)
    try:
        anonymous = scu().associate(
            "127.0.0.1", scp.port, ae_title="VERITRACE", tls_args=(client_context(cert, None), "127.0.0.1")
        )
        assert not anonymous.is_established
        identified = scu().associate(
            "127.0.0.1", scp.port, ae_title="VERITRACE", tls_args=(client_context(cert, key), "127.0.0.1")
        )
        assert identified.is_established
        assert identified.send_c_echo().Status == 0x0000
        identified.release()
    finally:
        scp.stop()


def test_association_limit_rejects_then_frees(tmp_path: Path, store: DicomStore) -> None:
    scp = start(tmp_path, store, max_associations=1)
    try:
        first = scu().associate("127.0.0.1", scp.port, ae_title="VERITRACE")
        assert first.is_established
        second = scu().associate("127.0.0.1", scp.port, ae_title="VERITRACE")
        assert second.is_rejected
        first.release()
        third = scu().associate("127.0.0.1", scp.port, ae_title="VERITRACE")
        assert third.is_established
        third.release()
    finally:
        scp.stop()


def test_several_called_ae_titles(tmp_path: Path, store: DicomStore) -> None:
    scp = start(tmp_path, store, additional_ae_titles=["VT_CT", "VT_XR"])
    try:
        for called in ("VERITRACE", "VT_CT", "VT_XR"):
            assoc = scu().associate("127.0.0.1", scp.port, ae_title=called)
            assert assoc.is_established, called
            assoc.release()
        assert scu().associate("127.0.0.1", scp.port, ae_title="VT_MR").is_rejected
        echoed = subprocess.run(
            ["echoscu", "-aet", "PACS", "-aec", "VT_CT", "127.0.0.1", str(scp.port)],
            capture_output=True,
            timeout=30,
        )
        assert echoed.returncode == 0, echoed.stderr
    finally:
        scp.stop()


def test_storage_accepted_and_query_refused_per_context(tmp_path: Path, store: DicomStore) -> None:
    scp = start(tmp_path, store)
    try:
        ae = scu()
        ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="VERITRACE")
        assert assoc.is_established
        accepted = {str(context.abstract_syntax) for context in assoc.accepted_contexts}
        rejected = {str(context.abstract_syntax) for context in assoc.rejected_contexts}
        assert accepted == {str(Verification), str(CTImageStorage)}
        assert rejected == {str(PatientRootQueryRetrieveInformationModelFind)}
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        scp.stop()


def test_a_peer_that_stalls_mid_data_set_is_dropped_after_the_network_timeout(
    tmp_path: Path, store: DicomStore
) -> None:
    """The timeout holds on every read, including the streamed data set: the half-written instance is
    discarded, the association slot is freed and the SCP keeps serving."""
    scp = start(tmp_path, store, network_timeout_s=0.5, max_associations=1)
    try:
        sop_instance = generate_uid()
        with socket.create_connection(("127.0.0.1", scp.port), timeout=30) as sock:
            sock.sendall(dicom_wire.associate_rq([(str(CTImageStorage), [str(ExplicitVRLittleEndian)])]))
            assert sock.recv(1)[0] == pdu.A_ASSOCIATE_AC
            sock.recv(65536)
            sock.sendall(dicom_wire.p_data(1, dicom_wire.c_store_rq(str(CTImageStorage), sop_instance),
                                           is_command=True))  # fmt: skip
            # One data-set PDV announcing 64 KB, of which 1 KB arrives; then nothing.
            data_pdu = dicom_wire.p_data(1, bytes(65536), is_command=False, max_pdu=1 << 20)
            sock.sendall(data_pdu[: 6 + pdu.PDV_HEADER_LENGTH + 1024])
            started = time.monotonic()
            while sock.recv(65536):  # an A-ABORT may come first; then the SCP closes
                pass
            assert time.monotonic() - started < 20
        deadline = time.monotonic() + 10
        while scp.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scp.active_associations == 0
        assert scp.spool.unfinished_writes() == []
        assoc = scu().associate("127.0.0.1", scp.port, ae_title="VERITRACE")  # the one slot is free again
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        with store.sessions() as session:
            stored = session.scalars(select(Instance).where(Instance.sop_instance_uid == sop_instance))
            assert stored.all() == []
    finally:
        scp.stop()

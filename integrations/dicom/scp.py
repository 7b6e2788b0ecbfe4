"""The Storage SCP: C-ECHO and C-STORE for every storage SOP class and transfer syntax, streamed to the spool.

pynetdicom is configured for a gateway rather than a demo SCP:
- `STORE_RECV_CHUNKED_DATASET`: each C-STORE data set is written to a temporary file as its P-DATA
  fragments arrive and is never decoded in memory; we then hash it and rename it into the spool.
- `UNRESTRICTED_STORAGE_SERVICE`: any storage (and private) SOP class is accepted with the transfer
  syntax the sender proposed, so objects are stored exactly as received (no transcoding on ingest).
Both are process-wide pynetdicom switches; the SCP sets them on `start()`.

Association policy: calling AE allow-list and called AE check are answered with A-ASSOCIATE-RJ by
pynetdicom; the host allow-list drops the TCP connection before any PDU is read; the association limit
rejects with "local limit exceeded". TCP_NODELAY is set on every accepted socket.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session

from integrations.dicom.audit_port import AuditLedger
from integrations.dicom.config import DicomConfig
from integrations.dicom.receipts import ReceiptBatcher
from integrations.dicom.receive import InstanceReceiver
from integrations.dicom.spool import Spool
from integrations.dicom.status import STATUS_CANNOT_UNDERSTAND, STATUS_SUCCESS

LOG = logging.getLogger(__name__)


class _GatewayServer(ThreadedAssociationServer):
    """pynetdicom's threaded server plus a host allow-list and TCP_NODELAY on accepted sockets."""

    allowed_hosts: frozenset[str] = frozenset()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if not self.allowed_hosts:
            return True
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if host in self.allowed_hosts:
            return True
        LOG.warning("connection from a host not on the allow-list was dropped")
        return False

    def shutdown(self) -> None:
        # pynetdicom's version also unregisters from the AE's server list, which only start_server fills.
        socketserver.BaseServer.shutdown(self)
        self.server_close()


def handle_echo(event: Event) -> int:
    """C-ECHO: PS3.7 Annex C.5.2 "Success"."""
    return STATUS_SUCCESS


def handle_store(event: Event, receiver: InstanceReceiver) -> int:
    """Move the chunked temp file (deleted by pynetdicom on return) into the spool, undecoded.

    Statuses: 0x0000 stored or duplicate; 0xA700 below the disk watermark; 0xA900 the data set is not the
    SOP instance the request names; 0xC000 the data set cannot be parsed; 0x0110 the index is unavailable.
    """
    request = cast(C_STORE, event.request)
    try:
        temp_path = Path(event.dataset_path)
    except AttributeError:
        return STATUS_CANNOT_UNDERSTAND
    result = receiver.receive(
        temp_path,
        calling_ae=str(event.assoc.requestor.ae_title).strip(),
        association_key=event.assoc,
        expected_sop_class=str(request.AffectedSOPClassUID) if request.AffectedSOPClassUID else None,
        expected_sop_instance=str(request.AffectedSOPInstanceUID) if request.AffectedSOPInstanceUID else None,
    )
    return result.status


def handle_association_end(event: Event, batcher: ReceiptBatcher) -> None:
    """Released, aborted or dropped: write this association's pending ledger receipts."""
    batcher.flush(event.assoc)


def build_ssl_context(config: DicomConfig) -> ssl.SSLContext | None:
    if config.tls_cert_file is None:
        return None
    if config.tls_key_file is None:
        raise TypeError("tls_key_file is required when tls_cert_file is set")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(config.tls_cert_file), str(config.tls_key_file))
    if config.tls_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(config.tls_ca_file))
    return context


class StorageScp:
    """`start()` returns at once; associations are served on pynetdicom threads until `stop()`."""

    def __init__(
        self,
        config: DicomConfig,
        session_factory: Callable[[], Session],
        ledger: AuditLedger,
        *,
        spool: Spool | None = None,
    ) -> None:
        self.config = config
        self.spool = spool or Spool(
            config.spool_dir, min_free_bytes=config.min_free_bytes, fsync=config.fsync
        )
        self.batcher = ReceiptBatcher(
            ledger, actor=f"dicom-scp:{config.ae_title}", batch_size=config.ledger_batch_size
        )
        self.receiver = InstanceReceiver(self.spool, session_factory, self.batcher)
        self._server: _GatewayServer | None = None
        self._ae: AE | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the SCP is not started")
        return int(self._server.server_address[1])

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_pdu_size = self.config.max_pdu_bytes
        ae.maximum_associations = self.config.max_associations
        ae.network_timeout = self.config.network_timeout_s
        ae.require_calling_aet = list(self.config.allowed_calling_aets)
        ae.require_called_aet = self.config.require_called_aet
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        return ae

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the SCP is already started")
        _config.STORE_RECV_CHUNKED_DATASET = True
        _config.UNRESTRICTED_STORAGE_SERVICE = True
        swept = self.spool.sweep_tmp()
        if swept:
            LOG.info("removed %d interrupted spool writes", swept)
        ae = self._make_ae()
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [self.receiver]),
            (evt.EVT_RELEASED, handle_association_end, [self.batcher]),
            (evt.EVT_ABORTED, handle_association_end, [self.batcher]),
            (evt.EVT_CONN_CLOSE, handle_association_end, [self.batcher]),
        ]
        server = ae.make_server(
            (self.config.host, self.config.port),
            ssl_context=build_ssl_context(self.config),
            evt_handlers=handlers,
            server_class=_GatewayServer,
        )
        assert isinstance(server, _GatewayServer)
        server.allowed_hosts = frozenset(self.config.allowed_calling_hosts)
        self._server, self._ae = server, ae
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True)
        self._thread.start()
        LOG.info("storage SCP %s listening on port %d", self.config.ae_title, self.port)

    def stop(self) -> None:
        """Stop accepting, end open associations, then write any receipts still pending."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        if self._ae is not None:
            for association in self._ae.active_associations:
                association.abort()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.batcher.flush_all()

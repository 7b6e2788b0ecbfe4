"""The Storage SCP: C-ECHO and C-STORE for every storage SOP class and transfer syntax, streamed to the spool.

It is our own upper-layer acceptor (`association.py`, `pdu.py`, `dimse_command.py`), one thread per
association with blocking sockets: pynetdicom's reactor polls with millisecond sleeps, which held a CT
study of small instances to a fraction of dcmtk's rate. pynetdicom remains our SCU (SR export) and a
test peer.

Association policy: the host allow-list closes the TCP connection before any PDU is read; the called AE
check, calling AE allow-list and association limit answer with A-ASSOCIATE-RJ. TCP_NODELAY is set on
every accepted socket; TLS (optionally mutual) wraps it before the first PDU.

Start-up order: sweep interrupted spool writes, make the spool's shard directories, replay the intake
journals of dead dicom processes (`intake_replay`), start the indexer thread, then listen. Shutdown: stop
listening, abort open associations, let the indexer commit what was acknowledged, then write the pending
receipts.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from integrations.dicom.association import StoreAssociation
from integrations.dicom.audit_port import AuditLedger
from integrations.dicom.batched_indexer import BatchedIndexer, IndexWriter
from integrations.dicom.config import DicomConfig
from integrations.dicom.intake_journal import JOURNAL_DIR, IntakeJournal
from integrations.dicom.intake_replay import replay_orphaned_journals
from integrations.dicom.receipts import ReceiptBatcher
from integrations.dicom.receive import InstanceReceiver
from integrations.dicom.spool import Spool, open_spool

LOG = logging.getLogger(__name__)


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


def engine_of(session_factory: Callable[[], Session]) -> Engine:
    with session_factory() as session:
        bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


class StorageScp:
    """`start()` returns at once; associations are served on their own threads until `stop()`."""

    def __init__(
        self,
        config: DicomConfig,
        session_factory: Callable[[], Session],
        ledger: AuditLedger,
        *,
        spool: Spool | None = None,
    ) -> None:
        self.config = config
        self.spool = spool or open_spool(config, audit=ledger)
        self.batcher = ReceiptBatcher(
            ledger, actor=f"dicom-scp:{config.ae_title}", batch_size=config.ledger_batch_size
        )
        self.writer = IndexWriter(engine_of(session_factory))
        self.indexer = BatchedIndexer(
            self.writer,
            self.batcher,
            IntakeJournal(self.spool.root / JOURNAL_DIR, fsync=self.spool.fsync),
            capacity=config.intake_queue_capacity,
            batch_max=config.intake_batch_max,
        )
        self.receiver = InstanceReceiver(self.spool, self.indexer)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._active: set[StoreAssociation] = set()
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the SCP is not started")
        return int(self._listener.getsockname()[1])

    @property
    def active_associations(self) -> int:
        with self._lock:
            return len(self._active)

    def start(self) -> None:
        if self._listener is not None:
            raise RuntimeError("the SCP is already started")
        swept = self.spool.sweep_tmp()
        if swept:
            LOG.info("removed %d interrupted spool writes", swept)
        self.spool.make_shard_directories()
        self.spool.start_ready_files()
        replay_orphaned_journals(
            self.spool, self.writer, self.batcher, batch_max=self.config.intake_batch_max
        )
        self.indexer.start()
        self._ssl_context = build_ssl_context(self.config)
        listener = socket.create_server((self.config.host, self.config.port), backlog=64, reuse_port=False)
        listener.settimeout(0.5)
        self._listener = listener
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="dicom-scp", daemon=True)
        self._thread.start()
        LOG.info("storage SCP %s listening on port %d", self.config.ae_title, self.port)

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                client, address = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                LOG.exception("accept failed; continuing")
                continue
            host = address[0] if isinstance(address, tuple) else str(address)
            if self.config.allowed_calling_hosts and host not in self.config.allowed_calling_hosts:
                LOG.warning("connection from a host not on the allow-list was dropped")
                client.close()
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(client,), name="dicom-assoc", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self._ssl_context is not None:
            try:
                client.settimeout(self.config.network_timeout_s)
                client = self._ssl_context.wrap_socket(client, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                LOG.warning("TLS handshake failed (%s)", type(exc).__name__)
                client.close()
                return
        with self._lock:
            over_limit = len(self._active) >= self.config.max_associations
            association = StoreAssociation(
                client,
                self.config,
                self.receiver,
                self.batcher,
                over_limit=over_limit,
                on_end=self._forget,
            )
            self._active.add(association)
        association.run()

    def _forget(self, association: StoreAssociation) -> None:
        with self._lock:
            self._active.discard(association)

    def stop(self) -> None:
        """Stop accepting, abort open associations, index what was acknowledged, write pending receipts."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        listener.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            active = list(self._active)
        for association in active:
            association.abort()
        self.indexer.stop()
        self.batcher.flush_all()
        self.spool.stop_ready_files()
        self.spool.release_scratch()

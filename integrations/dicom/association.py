"""One association as the acceptor: negotiate, then C-ECHO and C-STORE until release or abort.

Why blocking I/O on a thread per association: each call returns as soon as the kernel has bytes, so a
small instance costs a few system calls rather than the polling intervals of an event loop built on
sleeps. Each C-STORE data set is streamed fragment by fragment into a spool temp file behind a Part 10
header, hashed as it is written, and never decoded in memory; the PDU size we advertise bounds memory.

The rules for the stored result live in `InstanceReceiver`; this module only speaks the protocol
(PS3.8 upper layer, PS3.7 DIMSE) and maps whatever goes wrong to a status or an A-ABORT.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import AllTransferSyntaxes
from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from integrations.dicom import pdu
from integrations.dicom.config import DicomConfig
from integrations.dicom.dimse_command import (
    C_ECHO_RQ,
    C_STORE_RQ,
    STATUS_UNRECOGNISED_OPERATION,
    Command,
    CommandError,
    decode_command,
    encode_response,
)
from integrations.dicom.file_meta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, part10_header
from integrations.dicom.receipts import ReceiptBatcher
from integrations.dicom.receive import InstanceReceiver
from integrations.dicom.spool import IncomingFile
from integrations.dicom.status import STATUS_OUT_OF_RESOURCES, STATUS_PROCESSING_FAILURE, STATUS_SUCCESS

LOG = logging.getLogger(__name__)
VERIFICATION = "1.2.840.10008.1.1"
_KNOWN_TRANSFER_SYNTAXES = frozenset(str(uid) for uid in AllTransferSyntaxes)
# Largest A-ASSOCIATE-RQ we read: hundreds of presentation contexts fit in a few tens of KB.
_MAX_ASSOCIATE_RQ = 256 * 1024
_MIN_PDU_ALLOWANCE = 64 * 1024
# Data set bytes are read off the socket and written to the spool in pieces of at most this size, so
# writing and hashing one piece overlaps the sender's transmission of the next.
_DATA_CHUNK = 128 * 1024


def is_acceptable_abstract_syntax(uid: str) -> bool:
    """Verification, every storage SOP class, and SOP classes no service claims (private storage)."""
    if uid == VERIFICATION:
        return True
    service = uid_to_service_class(uid)
    return service is ServiceClass or issubclass(service, StorageServiceClass)


def negotiate_context(context: pdu.ProposedContext) -> pdu.AcceptedContext:
    """Accept the first proposed transfer syntax we can parse: objects are stored as the sender sent them."""
    if not is_acceptable_abstract_syntax(context.abstract_syntax):
        return pdu.AcceptedContext(
            context.context_id, pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, context.transfer_syntaxes[0]
        )
    for syntax in context.transfer_syntaxes:
        if syntax in _KNOWN_TRANSFER_SYNTAXES:
            return pdu.AcceptedContext(context.context_id, pdu.PC_ACCEPTANCE, syntax)
    return pdu.AcceptedContext(
        context.context_id, pdu.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, context.transfer_syntaxes[0]
    )


def rejection_for(request: pdu.AssociateRequest, config: DicomConfig) -> tuple[int, int, int] | None:
    """The A-ASSOCIATE-RJ (result, source, reason) for a request we do not serve, or None."""
    if not request.protocol_version & 0x0001:
        return pdu.RJ_PROTOCOL_VERSION_NOT_SUPPORTED
    if request.application_context != pdu.APPLICATION_CONTEXT:
        return pdu.RJ_APPLICATION_CONTEXT_NOT_SUPPORTED
    if config.require_called_aet and request.called_ae not in config.called_ae_titles:
        return pdu.RJ_CALLED_AE_NOT_RECOGNISED
    if config.allowed_calling_aets and request.calling_ae not in config.allowed_calling_aets:
        return pdu.RJ_CALLING_AE_NOT_RECOGNISED
    return None


def apply_network_timeout(sock: socket.socket, timeout_s: float) -> int:
    """Bound every read and write by `timeout_s`; returns the flags for `recv_into`.

    A plain TCP socket gets the timeout from the kernel (SO_RCVTIMEO / SO_SNDTIMEO) and stays blocking:
    with a Python-level timeout every read is a poll() and then a recv(). Reads then use MSG_WAITALL, one
    system call per piece instead of one per segment the kernel happens to hold. A TLS socket keeps the
    Python timeout (its reads take no flags). Either way an expired timeout raises an OSError.
    """
    if isinstance(sock, ssl.SSLSocket):
        sock.settimeout(timeout_s)
        return 0
    # A zero interval would mean "no timeout" to the kernel: round up to at least a microsecond.
    seconds, microseconds = divmod(max(1, round(timeout_s * 1_000_000)), 1_000_000)
    interval = struct.pack("@ll", seconds, microseconds)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
    return socket.MSG_WAITALL


class AssociationAborted(Exception):
    """The peer aborted, or closed the connection without releasing."""


@dataclass
class _PendingStore:
    command: Command
    context_id: int
    incoming: IncomingFile | None
    # Set when the data set is read and dropped (out of space, unknown operation): the status to answer.
    refusal: int | None = None


class StoreAssociation:
    """Serves one accepted TCP (or TLS) connection to its end; `run` never raises."""

    def __init__(
        self,
        sock: socket.socket,
        config: DicomConfig,
        receiver: InstanceReceiver,
        batcher: ReceiptBatcher,
        *,
        over_limit: bool = False,
        on_end: Callable[[StoreAssociation], None] | None = None,
    ) -> None:
        self.sock = sock
        self.config = config
        self.receiver = receiver
        self.batcher = batcher
        self.over_limit = over_limit
        self._on_end = on_end
        self.calling_ae = ""
        self._contexts: dict[int, str] = {}
        self._abstract: dict[int, str] = {}
        self._peer_max_pdu = 0
        self._max_pdu = max(config.max_pdu_bytes, _MIN_PDU_ALLOWANCE)
        self._command = bytearray()
        self._pending: _PendingStore | None = None
        self._chunk = memoryview(bytearray(_DATA_CHUNK))
        self._recv_flags = 0

    def run(self) -> None:
        try:
            self._recv_flags = apply_network_timeout(self.sock, self.config.network_timeout_s)
            if self._negotiate():
                self._serve()
        except (pdu.PduError, CommandError) as exc:
            LOG.warning("aborting an association after a protocol error: %s", exc)
            self._send_quietly(pdu.build_abort(pdu.ABORT_SERVICE_PROVIDER, pdu.ABORT_INVALID_PARAMETER))
        except AssociationAborted:
            LOG.info("association from %s ended without release", self.calling_ae or "an unknown peer")
        except (OSError, TimeoutError) as exc:
            LOG.info(
                "association from %s dropped (%s)", self.calling_ae or "an unknown peer", type(exc).__name__
            )
        except Exception:
            LOG.exception("association handler failed; aborting")
            self._send_quietly(pdu.build_abort())
        finally:
            self._end()

    def _end(self) -> None:
        if self._pending is not None and self._pending.incoming is not None:
            self._pending.incoming.discard()
        self._pending = None
        try:
            # Receipts follow the index commits: written once the association's last instance is indexed.
            self.receiver.indexer.association_ended(self)
        finally:
            try:
                self.sock.close()
            finally:
                if self._on_end is not None:
                    self._on_end(self)

    # --- I/O -----------------------------------------------------------------------------------------

    def _recv_exact(self, count: int) -> memoryview:
        return self._recv_into(memoryview(bytearray(count)))

    def _recv_into(self, view: memoryview) -> memoryview:
        """Fill `view` from the socket, however many reads it takes."""
        received = 0
        while received < len(view):
            n = self.sock.recv_into(view[received:], len(view) - received, self._recv_flags)
            if n == 0:
                raise AssociationAborted("connection closed")
            received += n
        return view

    def _read_pdu_header(self, limit: int) -> tuple[int, int]:
        pdu_type, length = pdu.read_header(bytes(self._recv_exact(6)))
        if length > limit:
            raise pdu.PduError(f"PDU of {length} bytes exceeds the {limit} we accept")
        return pdu_type, length

    def _read_pdu(self, limit: int) -> tuple[int, memoryview]:
        pdu_type, length = self._read_pdu_header(limit)
        return pdu_type, self._recv_exact(length) if length else memoryview(b"")

    def _recv_chunk(self, count: int) -> memoryview:
        """The next `count` bytes (at most `_DATA_CHUNK`), in a buffer reused by the next call."""
        return self._recv_into(self._chunk[:count])

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    # --- association establishment ------------------------------------------------------------------

    def _negotiate(self) -> bool:
        pdu_type, body = self._read_pdu(_MAX_ASSOCIATE_RQ)
        if pdu_type != pdu.A_ASSOCIATE_RQ:
            raise pdu.PduError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
        raw = bytes(body)
        request = pdu.parse_associate_rq(raw)
        self.calling_ae = request.calling_ae
        rejection = pdu.RJ_LOCAL_LIMIT_EXCEEDED if self.over_limit else rejection_for(request, self.config)
        if rejection is not None:
            LOG.warning("association from calling AE %r rejected %s", request.calling_ae, rejection)
            self._send(pdu.build_associate_rj(*rejection))
            return False
        accepted = [negotiate_context(context) for context in request.contexts]
        self._abstract = {context.context_id: context.abstract_syntax for context in request.contexts}
        self._contexts = {c.context_id: c.transfer_syntax for c in accepted if c.result == pdu.PC_ACCEPTANCE}
        self._peer_max_pdu = request.max_pdu_length
        self._send(
            pdu.build_associate_ac(
                pdu.AssociateAccept(
                    called_ae=raw[4:20],
                    calling_ae=raw[20:36],
                    contexts=accepted,
                    max_pdu_length=self.config.max_pdu_bytes,
                    implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                    implementation_version_name=IMPLEMENTATION_VERSION_NAME,
                )
            )
        )
        return True

    # --- data transfer --------------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            pdu_type, length = self._read_pdu_header(self._max_pdu + 6)
            if pdu_type == pdu.P_DATA_TF:
                self._read_p_data(length)
                continue
            if length:
                self._recv_exact(length)  # the body of a release or abort carries nothing we need
            if pdu_type == pdu.A_RELEASE_RQ:
                self._send(pdu.build_release_rp())
                return
            elif pdu_type == pdu.A_ABORT:
                raise AssociationAborted("peer sent A-ABORT")
            else:
                raise pdu.PduError(f"unexpected PDU type 0x{pdu_type:02X} during data transfer")

    def _read_p_data(self, length: int) -> None:
        """A P-DATA-TF body, PDV by PDV: command fragments whole, data set fragments streamed to the spool."""
        room = length
        while room:
            header = pdu.parse_pdv_header(self._recv_exact(min(room, pdu.PDV_HEADER_LENGTH)), room)
            room -= header.item_length
            if header.context_id not in self._contexts:
                raise pdu.PduError(f"PDV on presentation context {header.context_id}, which was not accepted")
            if header.is_command:
                self._on_command_fragment(header, self._recv_exact(header.data_length))
            else:
                self._on_data_fragment(header)

    def _on_command_fragment(self, header: pdu.PdvHeader, data: memoryview) -> None:
        if self._pending is not None:
            raise pdu.PduError("a command arrived before the previous command's data set ended")
        self._command += data
        if len(self._command) > _MIN_PDU_ALLOWANCE:
            raise CommandError("command set larger than any C-STORE or C-ECHO request")
        if header.is_last:
            command = decode_command(bytes(self._command))
            self._command.clear()
            self._on_command(command, header.context_id)

    def _on_data_fragment(self, header: pdu.PdvHeader) -> None:
        pending = self._pending
        if pending is None or pending.context_id != header.context_id:
            raise pdu.PduError("data set fragment without a command that announced it")
        left = header.data_length
        while left:
            piece = self._recv_chunk(min(left, _DATA_CHUNK))
            left -= len(piece)
            if pending.incoming is not None:
                try:
                    pending.incoming.write(piece)
                except OSError as exc:
                    self._refuse_midway(pending, exc)
        if header.is_last:
            self._pending = None
            self._respond(pending.command, pending.context_id, self._complete(pending))

    def _on_command(self, command: Command, context_id: int) -> None:
        if command.command_field == C_ECHO_RQ and not command.has_data_set:
            self._respond(command, context_id, STATUS_SUCCESS)
            return
        if command.command_field != C_STORE_RQ:
            if command.has_data_set:
                self._pending = _PendingStore(command, context_id, None, STATUS_UNRECOGNISED_OPERATION)
            else:
                self._respond(command, context_id, STATUS_UNRECOGNISED_OPERATION)
            return
        if not command.has_data_set:
            raise CommandError("C-STORE-RQ without a data set")
        if not self.receiver.spool.has_room():
            LOG.warning("spool below free-space watermark; refusing an instance from %s", self.calling_ae)
            self._pending = _PendingStore(command, context_id, None, STATUS_OUT_OF_RESOURCES)
            return
        refusal = self.receiver.indexer.refusal()
        if refusal is not None:  # index down or queue full: read the data set off the wire, write nothing
            self._pending = _PendingStore(command, context_id, None, refusal)
            return
        pending = _PendingStore(command, context_id, None)
        self._pending = pending
        try:
            pending.incoming = self.receiver.spool.incoming()
            pending.incoming.write(
                part10_header(
                    sop_class_uid=command.affected_sop_class or self._abstract.get(context_id, ""),
                    sop_instance_uid=command.affected_sop_instance or "",
                    transfer_syntax_uid=self._contexts[context_id],
                    source_ae=self.calling_ae,
                )
            )
        except OSError as exc:
            self._refuse_midway(pending, exc)

    def _refuse_midway(self, pending: _PendingStore, exc: OSError) -> None:
        """The spool write failed (ENOSPC, EIO): drop the partial file, read the rest of the data set
        off the wire, and answer 0xA700; the association goes on and a later resend can succeed."""
        LOG.error("spool write failed while receiving (%s); refusing the instance", type(exc).__name__)
        if pending.incoming is not None:
            pending.incoming.discard()
        pending.incoming = None
        pending.refusal = STATUS_OUT_OF_RESOURCES

    def _complete(self, pending: _PendingStore) -> int:
        if pending.refusal is not None or pending.incoming is None:
            return pending.refusal if pending.refusal is not None else STATUS_PROCESSING_FAILURE
        path: Path = pending.incoming.path
        try:
            written = pending.incoming.finish()
            result = self.receiver.receive(
                path,
                calling_ae=self.calling_ae,
                association_key=self,
                expected_sop_class=pending.command.affected_sop_class,
                expected_sop_instance=pending.command.affected_sop_instance,
                written=written,
            )
            return result.status
        except OSError as exc:
            LOG.error("writing a received instance failed (%s)", type(exc).__name__)
            return STATUS_OUT_OF_RESOURCES
        except Exception:
            LOG.exception("storing a received instance failed")
            return STATUS_PROCESSING_FAILURE
        finally:
            path.unlink(missing_ok=True)

    def _respond(self, command: Command, context_id: int, status: int) -> None:
        self._send(
            pdu.build_p_data(
                context_id,
                encode_response(command, status),
                is_command=True,
                max_pdu_length=self._peer_max_pdu,
            )
        )

    def abort(self) -> None:
        """From another thread (shutdown): A-ABORT and close, which ends `run` with an error it expects."""
        self._send_quietly(pdu.build_abort())
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

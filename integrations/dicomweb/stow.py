"""DICOMweb STOW-RS (PS3.18 §10.5): `POST /dicomweb/studies`, `multipart/related; type="application/dicom"`.

The body is parsed as it streams in; each part goes to a temporary file in the spool, never into memory.
A request is atomic: every part must parse, then all instances are indexed in one transaction, so the
stability tracker sees the study complete or not at all. A part that cannot be parsed fails the whole
request (409, with the per-part reasons in FailedSOPSequence) and nothing is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, params
from fastapi.responses import JSONResponse
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from integrations.dicom.audit_port import AuditLedger
from integrations.dicom.header import InstanceHeader, UnreadableDataset, read_instance_header
from integrations.dicom.receipts import ReceiptBatcher
from integrations.dicom.receive import facts_from
from integrations.dicom.spool import Spool
from integrations.dicom.status import STATUS_CANNOT_UNDERSTAND
from integrations.store.ingest import IngestOutcome, record_instance
from integrations.store.models import Study
from integrations.trace_parent import current_traceparent

LOG = logging.getLogger(__name__)
DICOM_JSON = "application/dicom+json"
_TAG_FAILED_SOP_SEQUENCE = "00081198"
_TAG_REFERENCED_SOP_SEQUENCE = "00081199"
_TAG_SOP_CLASS = "00081150"
_TAG_SOP_INSTANCE = "00081155"
_TAG_FAILURE_REASON = "00081197"
_TAG_WARNING_REASON = "00081196"
_WARNING_COERCED = 0xB000  # PS3.18 Table I.2-1 "Coercion of data elements" (we use it for conflicts)


class StowError(ValueError):
    """The request itself is wrong (media type, boundary, size): 4xx without touching the index."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    path: Path | None = None


class _PartsToFiles:
    """Callbacks for python-multipart that spill each part into its own file in the spool's scratch
    directory (this process's own, under tmp/: a dicom process starting meanwhile leaves it alone)."""

    def __init__(self, spool: Spool, max_bytes: int) -> None:
        self.spool, self.max_bytes = spool, max_bytes
        self.parts: list[_Part] = []
        self._file: Any = None
        self._field = b""
        self._value = b""
        self._total = 0

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._grow("_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._grow("_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _grow(self, name: str, chunk: bytes) -> None:
        setattr(self, name, getattr(self, name) + chunk)

    def _begin(self) -> None:
        part = _Part(path=self.spool.scratch_path())
        self.parts.append(part)
        assert part.path is not None
        self._file = part.path.open("wb")

    def _header_end(self) -> None:
        self.parts[-1].headers[self._field.decode("latin-1").strip().lower()] = self._value.decode(
            "latin-1"
        ).strip()
        self._field = self._value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._total += end - start
        if self._total > self.max_bytes:
            raise StowError(413, f"request body exceeds {self.max_bytes} bytes")
        self._file.write(data[start:end])

    def _end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        self._end()

    def cleanup(self) -> None:
        self.close()
        for part in self.parts:
            if part.path is not None:
                part.path.unlink(missing_ok=True)


def _boundary(content_type: str) -> bytes:
    media, options = parse_options_header(content_type)
    if media != b"multipart/related":
        raise StowError(415, "STOW-RS needs multipart/related")
    part_type = options.get(b"type", b"application/dicom").strip(b'"')
    if part_type != b"application/dicom":
        raise StowError(
            415, f"only type=application/dicom parts are supported, not {part_type.decode('latin-1')}"
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise StowError(400, "multipart/related without a boundary")
    return boundary.strip(b'"')


def _failure(reason: int, header: InstanceHeader | None) -> dict[str, Any]:
    item: dict[str, Any] = {_TAG_FAILURE_REASON: {"vr": "US", "Value": [reason]}}
    if header is not None:
        item[_TAG_SOP_CLASS] = {"vr": "UI", "Value": [header.sop_class_uid]}
        item[_TAG_SOP_INSTANCE] = {"vr": "UI", "Value": [header.sop_instance_uid]}
    return item


def _remember_trace(session: Session, study_uids: set[str]) -> None:
    """Keep this request's traceparent on its studies: the analysis queued later continues its trace."""
    traceparent = current_traceparent()
    if traceparent is not None:
        session.execute(update(Study).where(Study.study_uid.in_(study_uids)).values(traceparent=traceparent))


def make_stow_router(
    *,
    spool: Spool,
    session_factory: Callable[[], Session],
    ledger: AuditLedger,
    max_request_bytes: int = 4 * 1024**3,
    dependencies: Sequence[params.Depends] = (),
) -> APIRouter:
    """The STOW-RS route; the composition root mounts it and supplies authentication `dependencies`."""
    router = APIRouter(prefix="/dicomweb", tags=["dicomweb"], dependencies=list(dependencies))
    batcher = ReceiptBatcher(ledger, actor="dicomweb-stow")

    @router.post("/studies", response_class=JSONResponse)
    async def store_instances(request: Request) -> JSONResponse:
        """Store every part or none. 200 all stored; 409 nothing stored (see FailedSOPSequence)."""
        try:
            boundary = _boundary(request.headers.get("content-type", ""))
        except StowError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)
        if not spool.has_room():
            return JSONResponse({"detail": "spool below free-space watermark"}, status_code=503)
        sink = _PartsToFiles(spool, max_request_bytes)
        parser = MultipartParser(boundary, sink.callbacks())  # type: ignore[arg-type]
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
            sink.close()
            client_host = request.client.host if request.client else "unknown"
            return await run_in_threadpool(_commit, sink.parts, client_host)
        except StowError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)
        finally:
            sink.cleanup()

    def _commit(parts: list[_Part], client_host: str) -> JSONResponse:
        headers: list[tuple[_Part, InstanceHeader]] = []
        failed: list[dict[str, Any]] = []
        for part in parts:
            assert part.path is not None
            content_type = part.headers.get("content-type", "application/dicom").split(";")[0].strip()
            if content_type != "application/dicom":
                failed.append(_failure(STATUS_CANNOT_UNDERSTAND, None))
                continue
            try:
                headers.append((part, read_instance_header(part.path)))
            except UnreadableDataset as exc:
                LOG.warning("STOW-RS part rejected: %s", exc)
                failed.append(_failure(STATUS_CANNOT_UNDERSTAND, None))
        if not parts:
            raise StowError(400, "the request has no parts")
        if failed:
            return JSONResponse(
                {_TAG_FAILED_SOP_SEQUENCE: {"vr": "SQ", "Value": failed}}, 409, media_type=DICOM_JSON
            )
        now = datetime.now(UTC)
        stored: list[tuple[InstanceHeader, Any, IngestOutcome]] = []
        try:
            with session_factory() as session, session.begin():
                for part, header in headers:
                    assert part.path is not None
                    spooled = spool.adopt(part.path)
                    outcome = record_instance(
                        session, facts_from(header, spooled), calling_ae=None, now=now
                    ).outcome
                    stored.append((header, spooled, outcome))
                _remember_trace(session, {header.study_uid for _, header in headers})
        except (SQLAlchemyError, OSError) as exc:
            LOG.error("STOW-RS index write failed (%s); nothing indexed", type(exc).__name__)
            return JSONResponse({"detail": "index write failed; nothing stored"}, status_code=503)
        association_key = object()
        referenced = []
        for header, spooled, outcome in stored:
            item: dict[str, Any] = {
                _TAG_SOP_CLASS: {"vr": "UI", "Value": [header.sop_class_uid]},
                _TAG_SOP_INSTANCE: {"vr": "UI", "Value": [header.sop_instance_uid]},
            }
            if outcome is IngestOutcome.CONFLICT:
                item[_TAG_WARNING_REASON] = {"vr": "US", "Value": [_WARNING_COERCED]}
            referenced.append(item)
            if outcome is not IngestOutcome.DUPLICATE:
                batcher.add(
                    association_key,
                    calling_ae=f"stow-rs:{client_host}",
                    study_uid=header.study_uid,
                    patient_ref=header.patient_id,
                    receipt={
                        "sop_instance_uid": header.sop_instance_uid,
                        "sha256": spooled.sha256,
                        "size_bytes": spooled.size_bytes,
                        "conflict": outcome is IngestOutcome.CONFLICT,
                    },
                    source="stow-rs",
                )
        batcher.flush(association_key)
        return JSONResponse(
            {_TAG_REFERENCED_SOP_SEQUENCE: {"vr": "SQ", "Value": referenced}}, 200, media_type=DICOM_JSON
        )

    return router

"""Structured logs: one JSON object per line, with patient data redacted before anything is written.

Our own code already logs ids and error types only; the filter is the second line of defence for what a
library logs (a parser quoting a header, a driver quoting SQL parameters, an exception message). It redacts:
FHIR patient references, DICOM person names (`FAMILY^GIVEN`), dates, long digit runs (MRNs, phone and
insurance numbers; dotted DICOM UIDs are kept), e-mail addresses, and the values of fields whose names are
known to carry PHI when they arrive as structured `extra` fields.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

REDACTED = "[redacted]"
PHI_FIELD_NAMES = frozenset(
    {
        "patient_id",
        "patient_ref",
        "patient",
        "patient_name",
        "name",
        "birth_date",
        "birthdate",
        "mrn",
        "accession_number",
        "address",
        "phone",
        "email",
        "ssn",
    }
)
_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\bPatient/[A-Za-z0-9\-.]{1,64}"),
    re.compile(r"\b[\w'\-]+\^[\w'\-^ ]*"),  # DICOM PN: FAMILY^GIVEN^MIDDLE
    re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?\b"),
    re.compile(r"(?<![\d.])(?:19|20)\d{6}(?![\d.])"),  # DICOM DA: YYYYMMDD
    re.compile(r"(?<![\d.])\d{6,}(?![\d.])"),
    re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    re.compile(r"[\w.+\-]+@[\w\-]+\.[\w.\-]+"),
)
# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def _redact_value(key: str, value: Any) -> Any:
    if key.lower() in PHI_FIELD_NAMES:
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value("", v) for v in value]
    return value


class PhiRedactionFilter(logging.Filter):
    """Rewrites the record in place: message formatted and redacted, extras redacted, exception redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(formatted)
            record.exc_info = None
        for key in list(vars(record)):
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                setattr(record, key, _redact_value(key, getattr(record, key)))
        return True


class JsonLogFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", "process", "thread", ...extras, "exception"?}` on one line."""

    def __init__(self, service: str | None = None) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        if self.service:
            body["service"] = self.service
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                body[key] = value
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            body["exception"] = record.exc_text
        return json.dumps(body, default=str, ensure_ascii=False)


def configure_json_logging(
    service: str, *, level: int = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Replace the root logger's handlers with one JSON handler behind the PHI filter; returns it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLogFormatter(service))
    handler.addFilter(PhiRedactionFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    return handler

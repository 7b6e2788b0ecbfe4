"""JSON logs: one object per line, and patient data redacted whatever the logger was handed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from cds.observability.json_logs import REDACTED, configure_json_logging, redact

PHI = [
    "DOE^JANE",
    "Patient/vt-demo-1",
    "1984-03-07",
    "19840307",
    "123456789",
    "jane.doe@example.org",
    "078-05-1120",
]


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    stream = io.StringIO()
    configure_json_logging("test-service", stream=stream)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_line_is_a_json_object_with_fields(captured: io.StringIO) -> None:
    logging.getLogger("veritrace.test").warning(
        "study %s queued", "1.2.840.113619.2.55.3", extra={"queue": "gpu"}
    )
    (line,) = _lines(captured)
    assert line["level"] == "WARNING" and line["logger"] == "veritrace.test"
    assert line["service"] == "test-service" and line["queue"] == "gpu"
    assert line["message"] == "study 1.2.840.113619.2.55.3 queued"  # dotted UIDs are kept


def test_phi_in_messages_arguments_extras_and_exceptions_is_redacted(captured: io.StringIO) -> None:
    log = logging.getLogger("some.library")
    log.info("parsed header of %s born %s", "DOE^JANE", "19840307")
    log.info("fetched Patient/vt-demo-1 (mrn 123456789, dob 1984-03-07, mail jane.doe@example.org)")
    log.info("lookup", extra={"patient_id": "vt-demo-1", "detail": {"ssn": "x", "note": "078-05-1120"}})
    try:
        raise ValueError("no such patient DOE^JANE 1984-03-07")
    except ValueError:
        log.exception("query failed")
    output = captured.getvalue()
    for value in PHI:
        assert value not in output, value
    lines = _lines(captured)
    assert lines[2]["patient_id"] == REDACTED and lines[2]["detail"] == {"ssn": REDACTED, "note": REDACTED}
    assert "ValueError" in str(lines[3]["exception"])


@pytest.mark.parametrize("value", PHI)
def test_redact_removes_each_kind(value: str) -> None:
    assert value not in redact(f"before {value} after")


def test_redact_keeps_what_operators_need() -> None:
    kept = "analysis 3f2c9a1e-77b1-4c1f-9a55-0d4e3b2a1c00 failed: FhirUnavailable (status 503) after 12 s"
    assert redact(kept) == kept

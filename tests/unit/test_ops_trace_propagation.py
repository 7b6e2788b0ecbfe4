"""Trace context across our own boundaries: a stored traceparent, HTTP requests in and FHIR calls out."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cds.observability.tracing import FASTAPI_NATIVE_TELEMETRY_OFF, JsonLinesSpanExporter, TracingMiddleware
from integrations.fhir.client import FhirClient
from integrations.trace_parent import TRACEPARENT_RE, continued_trace, current_traceparent
from tests.tracing_support import memory_spans as memory_spans

_tracer = trace.get_tracer("tests")
INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def test_a_stored_traceparent_continues_the_trace_elsewhere(memory_spans: InMemorySpanExporter) -> None:
    assert current_traceparent() is None  # no span: nothing to store
    with _tracer.start_as_current_span("stow request"):
        stored = current_traceparent()
    assert stored is not None and TRACEPARENT_RE.match(stored)
    with continued_trace(stored), _tracer.start_as_current_span("publish"):
        pass
    request, publish = memory_spans.get_finished_spans()
    assert publish.parent is not None
    assert (publish.parent.trace_id, publish.parent.span_id) == _ids(request)


def test_a_malformed_or_missing_traceparent_changes_nothing(memory_spans: InMemorySpanExporter) -> None:
    for value in (
        None,
        "",
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",
        "01-zz-zz-zz",
        INCOMING + "; drop table",
    ):
        with continued_trace(value), _tracer.start_as_current_span("publish"):
            pass
    assert all(span.parent is None for span in memory_spans.get_finished_spans())


def test_fhir_calls_are_client_spans_without_ids_and_carry_the_trace(
    memory_spans: InMemorySpanExporter,
) -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.method == "POST":
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response"})
        return httpx.Response(200, json={"resourceType": "Patient", "id": "pat-4711"})

    client = FhirClient("http://fhir.test/r4", transport=httpx.MockTransport(answer))
    with _tracer.start_as_current_span("run task") as task:
        client.read("Patient", "pat-4711")
        client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
    spans = [span for span in memory_spans.get_finished_spans() if span.name.startswith("FHIR ")]
    assert [span.name for span in spans] == ["FHIR GET Patient", "FHIR POST system"]
    for span, request in zip(spans, sent, strict=True):
        assert span.parent is not None and span.parent.span_id == task.get_span_context().span_id
        assert "pat-4711" not in json.dumps(dict(span.attributes or {}))
        trace_id, span_id = _ids(span)
        assert request.headers["traceparent"][:-2] == f"00-{trace_id:032x}-{span_id:016x}-"


def _app() -> FastAPI:
    app = FastAPI(telemetry=FASTAPI_NATIVE_TELEMETRY_OFF)
    app.add_middleware(TracingMiddleware)

    @app.get("/patients/{patient_id}/things")
    def things(patient_id: str) -> dict[str, str]:
        return {"ok": "yes"}

    return app


def test_one_server_span_per_request_named_by_route_not_path(memory_spans: InMemorySpanExporter) -> None:
    with TestClient(_app()) as client:
        assert client.get("/patients/pat-4711/things?name=Doe").status_code == 200
    spans = memory_spans.get_finished_spans()
    assert [span.name for span in spans] == ["GET /patients/{patient_id}/things"]
    assert spans[0].parent is None
    assert "pat-4711" not in json.dumps(dict(spans[0].attributes or {}))


def test_a_callers_traceparent_makes_the_request_part_of_its_trace(
    memory_spans: InMemorySpanExporter,
) -> None:
    with TestClient(_app()) as client:
        client.get("/patients/p/things", headers={"traceparent": INCOMING})
    (span,) = memory_spans.get_finished_spans()
    assert span.parent is not None
    assert (span.parent.trace_id, span.parent.span_id) == (int(INCOMING[3:35], 16), int(INCOMING[36:52], 16))


def test_json_lines_exporter_appends_one_line_per_span(
    tmp_path: Path, memory_spans: InMemorySpanExporter
) -> None:
    with _tracer.start_as_current_span("a"), _tracer.start_as_current_span("b"):
        pass
    out = JsonLinesSpanExporter(tmp_path / "traces" / "api.jsonl")
    finished = memory_spans.get_finished_spans()
    out.export(finished[:1])
    out.export(finished[1:])
    records = [json.loads(line) for line in out.path.read_text().splitlines()]
    assert [record["name"] for record in records] == ["b", "a"]
    assert records[0]["parent_span_id"] == records[1]["span_id"]
    assert out.path.stat().st_mode & 0o777 == 0o600

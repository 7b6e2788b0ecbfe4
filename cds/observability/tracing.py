"""OpenTelemetry tracing: one provider per process, spans exported to a JSON-lines file or kept in memory.

The trace crosses processes through the Celery message headers (`integrations.tasks.trace_context`), so a
hook call or a stable study and the worker's analysis share one trace id; a study stored over STOW-RS keeps
the request's traceparent in its row until the `dicom` process queues it (`integrations.trace_parent`), so
the request, the publish, the worker's task and its FHIR calls form one trace. Request spans carry the route
template, method and status only: never query strings, headers or bodies (they hold tokens and patient ids).
A collector (OTLP) can be added by the deployment as another span processor on the returned provider.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from fastapi.telemetry import TelemetryConfig
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_tracer = trace.get_tracer("veritrace.api")


class JsonLinesSpanExporter(SpanExporter):
    """Appends one JSON object per finished span. Several processes may share the file (a worker's pool
    children do): each batch is one `write` on an O_APPEND descriptor, so lines never interleave."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(span), sort_keys=True) + "\n" for span in spans).encode()
        with self._lock:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(descriptor, lines)
            finally:
                os.close(descriptor)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_record(span: ReadableSpan) -> dict[str, object]:
    context = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name if span.kind else None,
        "trace_id": format(context.trace_id, "032x") if context else None,
        "span_id": format(context.span_id, "016x") if context else None,
        "parent_span_id": format(parent.span_id, "016x") if parent else None,
        "service": span.resource.attributes.get("service.name"),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }


def configure_tracing(
    service_name: str,
    *,
    trace_file: Path | None = None,
    exporter: SpanExporter | None = None,
    synchronous: bool = False,
) -> TracerProvider:
    """Install this process's tracer provider; call once at start-up from the composition root.

    `trace_file` writes JSON lines; `exporter` is any other exporter (tests pass an in-memory one).
    `synchronous` exports each span as it ends (tests); otherwise spans are batched off the hot path.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporters: list[SpanExporter] = []
    if trace_file is not None:
        exporters.append(JsonLinesSpanExporter(trace_file))
    if exporter is not None:
        exporters.append(exporter)
    for each in exporters:
        processor = SimpleSpanProcessor(each) if synchronous else BatchSpanProcessor(each)
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


# FastAPI's own OpenTelemetry support (on by default once a tracer provider is installed) would add a
# second SERVER span per request with the raw URL path, plus spans and logs that can carry request values;
# `create_app` turns it off so TracingMiddleware's span, with the fields listed above, is the only one.
FASTAPI_NATIVE_TELEMETRY_OFF: TelemetryConfig = {
    "tracing": False,
    "operation_spans": False,
    "logs": False,
    "metrics": False,
}


class TracingMiddleware:
    """A SERVER span per HTTP request, named by method and route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", "GET"))
        # A caller's W3C traceparent (a PACS or EHR that traces) makes this span part of its trace.
        incoming = [value.decode("latin-1") for key, value in scope["headers"] if key == b"traceparent"]
        parent = propagate.extract({"traceparent": incoming[0]}) if incoming else None
        with _tracer.start_as_current_span(
            f"{method} request",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method},
        ) as span:
            status = 500

            async def send_with_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            try:
                await self.app(scope, receive, send_with_status)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))

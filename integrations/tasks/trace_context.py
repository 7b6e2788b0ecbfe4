"""OpenTelemetry context across the queue: the publisher's span becomes the parent of the worker's span.

Uses only the OpenTelemetry API (a no-op until a process installs an SDK tracer provider, which the
composition root does through `cds.observability.tracing`). The W3C `traceparent` travels as a Celery
message header; span attributes are task names and ids, never arguments beyond ids or patient data.
A publish inside a continued trace (`integrations.tasks.enqueue`) makes its span a child of that trace.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from celery import signals
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

_tracer = trace.get_tracer("veritrace.tasks")
FLUSH_TIMEOUT_MS = 2000
_publishing: dict[str, trace.Span] = {}
_running: dict[str, tuple[trace.Span, object]] = {}
_lock = threading.Lock()


def _task_id(headers: dict[str, Any] | None, body: Any) -> str | None:
    if headers and headers.get("id"):
        return str(headers["id"])
    if isinstance(body, dict) and body.get("id"):  # protocol 1
        return str(body["id"])
    return None


@signals.before_task_publish.connect(weak=False)
def start_publish_span(
    sender: str | None = None, headers: dict[str, Any] | None = None, body: Any = None, **_: Any
) -> None:
    """Open a PRODUCER span and put its context in the message headers."""
    task_id = _task_id(headers, body)
    if headers is None or task_id is None:
        return
    span = _tracer.start_span(
        f"publish {sender}",
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "celery", "celery.task_name": str(sender), "celery.task_id": task_id},
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    headers.update(carrier)
    with _lock:
        _publishing[task_id] = span


@signals.after_task_publish.connect(weak=False)
def end_publish_span(headers: dict[str, Any] | None = None, body: Any = None, **_: Any) -> None:
    task_id = _task_id(headers, body)
    with _lock:
        span = _publishing.pop(task_id, None) if task_id else None
    if span is not None:
        span.end()


def _carrier_from(task: Any) -> dict[str, str]:
    request = task.request
    carrier: dict[str, str] = {}
    for key in ("traceparent", "tracestate"):
        value = getattr(request, key, None) or (getattr(request, "headers", None) or {}).get(key)
        if value:
            carrier[key] = str(value)
    return carrier


@signals.task_prerun.connect(weak=False)
def start_task_span(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    """Open a CONSUMER span whose parent is the publisher's, and make it current for the task's thread."""
    if task_id is None or task is None:
        return
    parent = propagate.extract(_carrier_from(task))
    span = _tracer.start_span(
        f"run {task.name}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "celery",
            "celery.task_name": str(task.name),
            "celery.task_id": task_id,
            "celery.retries": int(task.request.retries or 0),
        },
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    with _lock:
        _running[task_id] = (span, token)


@signals.task_failure.connect(weak=False)
def mark_task_span_failed(
    task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    with _lock:
        entry = _running.get(task_id) if task_id else None
    if entry is not None:
        # The exception type only: messages of third-party errors can quote data.
        entry[0].set_status(Status(StatusCode.ERROR, type(exception).__name__ if exception else None))


@signals.task_postrun.connect(weak=False)
def end_task_span(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    with _lock:
        entry = _running.pop(task_id, None) if task_id else None
    if entry is None:
        return
    span, token = entry
    if state:
        span.set_attribute("celery.state", state)
    span.end()
    # A pool child ends with os._exit (or SIGKILL at a hard time limit), skipping the batch exporter's own
    # flush: export this task's spans now.
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        flush(FLUSH_TIMEOUT_MS)
    # postrun on another thread than prerun: the context dies with that thread anyway.
    with contextlib.suppress(Exception):
        otel_context.detach(token)  # type: ignore[arg-type]

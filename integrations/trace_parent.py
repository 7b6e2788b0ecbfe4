"""The W3C `traceparent` of the current span, kept with data that another process picks up later.

A STOW-RS request stores a study in the `api` process; seconds later the `dicom` process finds it stable and
queues its analysis. The request's trace continues there through the study row: `current_traceparent()`
when storing, `continued_trace(value)` around the enqueue. Only the traceparent is kept (version, trace id,
parent span id, flags): no tracestate or baggage, whose vendor content we cannot vouch for.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# W3C Trace Context §3.2: version 00, 32 hex trace id, 16 hex parent id, 2 hex flags (all-zero ids invalid).
TRACEPARENT_RE = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
TRACEPARENT_LENGTH = 55
_propagator = TraceContextTextMapPropagator()


def current_traceparent() -> str | None:
    """The current span as a `traceparent` value; None when no span is recording (tracing off)."""
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    value = carrier.get("traceparent")
    return value if value is not None and TRACEPARENT_RE.match(value) else None


@contextmanager
def continued_trace(traceparent: str | None) -> Iterator[None]:
    """Make `traceparent` the current parent inside the block; a missing or bad value changes nothing."""
    if traceparent is None or not TRACEPARENT_RE.match(traceparent):
        yield
        return
    token = otel_context.attach(_propagator.extract({"traceparent": traceparent}))
    try:
        yield
    finally:
        otel_context.detach(token)

"""In-memory spans for tests that share one process (and so one OpenTelemetry tracer provider).

A process installs its tracer provider once; a second `set_tracer_provider` is ignored. Every test that
reads spans therefore adds its own in-memory exporter to the one provider, installing it if needed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cds.observability.tracing import configure_tracing


def span_exporter() -> InMemorySpanExporter:
    """An exporter that receives every span ended in this process from now on, as it ends."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = configure_tracing("veritrace-tests", synchronous=True)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def memory_spans() -> Iterator[InMemorySpanExporter]:
    """`span_exporter()` for one test; shut down afterwards so later tests' spans are not kept."""
    exporter = span_exporter()
    yield exporter
    exporter.shutdown()

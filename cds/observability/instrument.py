"""What the composition root calls: instrument the API app; set up a process's logs and traces."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy import Engine

from cds.observability.json_logs import configure_json_logging
from cds.observability.metrics import MetricsMiddleware, RequestMetrics, build_metrics_router
from cds.observability.store_metrics import StoreMetricsCollector
from cds.observability.tracing import TracingMiddleware, configure_tracing


def instrument_api(
    app: FastAPI,
    *,
    engine: Engine,
    ledger_size: Callable[[], int],
    queue_depths: Callable[[], dict[str, int]] | None = None,
) -> RequestMetrics:
    """Add `/metrics`, the request metrics middleware and request spans to a built app (before it starts)."""
    metrics = RequestMetrics()
    metrics.registry.register(
        StoreMetricsCollector(engine, ledger_size=ledger_size, queue_depths=queue_depths)
    )
    # Starlette runs the last-added middleware first: spans wrap the timing, so both see the same request.
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(TracingMiddleware)
    app.include_router(build_metrics_router(metrics))
    return metrics


def configure_process_observability(
    service: str, *, json_logs: bool, trace_file: Path | None, level: int = logging.INFO
) -> None:
    """Call once at process start: JSON logs behind the PHI filter, and spans to `trace_file` if given."""
    if json_logs:
        configure_json_logging(service, level=level)
    if trace_file is not None:
        configure_tracing(service, trace_file=trace_file)

"""`veritrace_*` request metrics and the `/metrics` endpoint.

Each API replica keeps its own histograms (Prometheus scrapes every replica and sums); values that live in
the database (ingest, analyses, ledger size, queue depth) come from `store_metrics`, registered on the same
registry. Labels are bounded: a route's template (never the raw path), and a CDS service id only when the
service exists, so a caller sending random ids cannot grow the series without limit.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HOOK_PATH_PREFIX = "/cds-services/"
# Hooks answer in tens of milliseconds; the tail that matters to an EHR is up to a few seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """The request-path metric families, on a registry of their own (one per app, so tests stay apart)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.hook_latency = Histogram(
            "veritrace_hook_latency_seconds",
            "CDS Hooks service call latency, from request to response start",
            ["service", "status_class"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "veritrace_http_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "veritrace_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(self, *, route: str, method: str, status: int, seconds: float, service: str | None) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_latency.labels(route, method).observe(seconds)
        if service is not None:
            self.hook_latency.labels(service, f"{status // 100}xx").observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


def _hook_service(scope: Scope, route: str, method: str, status: int) -> str | None:
    """The CDS service id of a hook call; None for anything else, or for an unknown service (404)."""
    if method != "POST" or route != "/cds-services/{service_id}" or status == 404:
        return None
    service_id = (scope.get("path_params") or {}).get("service_id")
    return str(service_id) if service_id else None


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): times each HTTP request up to the start of its response."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        recorded = False

        def record() -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            method = str(scope.get("method", "GET"))
            route = _route_template(scope)
            self.metrics.observe(
                route=route,
                method=method,
                status=status,
                seconds=time.perf_counter() - started,
                service=_hook_service(scope, route, method, status),
            )

        async def send_and_time(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                record()
            await send(message)

        try:
            await self.app(scope, receive, send_and_time)
        finally:
            record()


def build_metrics_router(metrics: RequestMetrics) -> APIRouter:
    """`GET /metrics` in the Prometheus text format (not in the OpenAPI schema: it is not for EHRs)."""
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return router

"""Metrics read from the database and the broker when Prometheus scrapes: ingest, analyses, ledger, queues.

Why at scrape time: the DICOM gateway and the workers are separate processes (often on other nodes) with no
HTTP server of their own; the database already holds every instance, analysis and report, so any API
replica can report them exactly. Reads are cached for `cache_s` so several scrapers cost one query set, and
analysis durations and verification outcomes are read incrementally (only analyses completed since the
last scrape), so a scrape stays cheap as the history grows. A failing source is reported as
`veritrace_metrics_source_up{source=...} 0` rather than failing the scrape.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from integrations.ops.tables import dead_letters, ensure_ops_tables
from integrations.store.models import Analysis, Instance, Report, Study

log = logging.getLogger(__name__)

# CPU tiny models take seconds; a 7B model on a GPU tens of seconds; a stuck study minutes.
ANALYSIS_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


@dataclass
class _AnalysisHistory:
    """Everything accumulated from completed analyses, advanced past a (completed_at, id) watermark."""

    bucket_counts: list[int] = field(default_factory=lambda: [0] * len(ANALYSIS_BUCKETS))
    count: int = 0
    total_s: float = 0.0
    verification_failures: Counter[str] = field(default_factory=Counter)
    watermark: datetime | None = None
    seen_at_watermark: set[str] = field(default_factory=set)

    def add(self, analysis_id: str, seconds: float | None, trace: dict[str, Any] | None) -> None:
        if seconds is not None:
            self.count += 1
            self.total_s += seconds
            for index, bound in enumerate(ANALYSIS_BUCKETS):
                if seconds <= bound:
                    self.bucket_counts[index] += 1
        for kind, amount in verification_failures_in(trace).items():
            self.verification_failures[kind] += amount


def verification_failures_in(trace: dict[str, Any] | None) -> Counter[str]:
    """Count what the citation check and verifier refused in one stored trace, by kind."""
    failures: Counter[str] = Counter()
    for step in (trace or {}).get("steps") or []:
        detail = step.get("detail") or {}
        kind = step.get("kind")
        if kind == "citations":
            failures["unknown_citation"] += len(detail.get("dropped") or [])
        elif kind == "parse_error":
            failures["unparseable_output"] += 1
        elif kind == "verification":
            for verdict in detail.get("rejected") or []:
                reason = verdict.get("reason") if isinstance(verdict, dict) else None
                failures[str(reason or "rejected")] += 1
    return failures


@dataclass
class _Snapshot:
    families: list[Metric]
    taken_at: float


class StoreMetricsCollector(Collector):
    """Register with `registry.register(StoreMetricsCollector(...))` next to the request metrics."""

    def __init__(
        self,
        engine: Engine,
        *,
        ledger_size: Callable[[], int],
        queue_depths: Callable[[], dict[str, int]] | None = None,
        cache_s: float = 5.0,
    ) -> None:
        self.engine = engine
        self.ledger_size = ledger_size
        self.queue_depths = queue_depths
        self.cache_s = cache_s
        self._history = _AnalysisHistory()
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._snapshot is None or now - self._snapshot.taken_at >= self.cache_s:
                self._snapshot = _Snapshot(list(self._gather()), now)
            return list(self._snapshot.families)

    def _gather(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "veritrace_metrics_source_up", "Whether a metrics source could be read", labels=["source"]
        )
        try:
            yield from self._database_families()
            up.add_metric(["database"], 1)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("database metrics unavailable (%s)", type(exc).__name__)
            up.add_metric(["database"], 0)
        try:
            ledger = GaugeMetricFamily("veritrace_ledger_size", "Entries in the audit ledger")
            ledger.add_metric([], self.ledger_size())
            yield ledger
            up.add_metric(["ledger"], 1)
        except Exception as exc:  # the ledger's own errors as well as the database's
            log.warning("ledger size unavailable (%s)", type(exc).__name__)
            up.add_metric(["ledger"], 0)
        if self.queue_depths is not None:
            try:
                depths = self.queue_depths()
                depth = GaugeMetricFamily(
                    "veritrace_queue_depth", "Messages ready in a broker queue", labels=["queue"]
                )
                for name, value in sorted(depths.items()):
                    depth.add_metric([name], value)
                yield depth
                up.add_metric(["broker"], 1)
            except Exception as exc:  # broker down or unreachable: report it, keep the scrape
                log.warning("queue depth unavailable (%s)", type(exc).__name__)
                up.add_metric(["broker"], 0)
        yield up

    def _database_families(self) -> Iterator[Metric]:
        ensure_ops_tables(self.engine)
        with self.engine.connect() as connection:
            instances, stored_bytes = connection.execute(
                sa.select(sa.func.count(Instance.id), sa.func.coalesce(sa.func.sum(Instance.size_bytes), 0))
            ).one()
            studies = connection.execute(sa.select(Study.state, sa.func.count()).group_by(Study.state)).all()
            analyses = connection.execute(
                sa.select(Analysis.status, sa.func.count()).group_by(Analysis.status)
            ).all()
            reports = connection.execute(sa.select(sa.func.count(Report.id))).scalar_one()
            dead = connection.execute(
                sa.select(sa.func.count())
                .select_from(dead_letters)
                .where(dead_letters.c.requeued_at.is_(None))
            ).scalar_one()
            self._advance_history(connection)

        ingest = CounterMetricFamily("veritrace_ingest_instances", "DICOM instance versions indexed")
        ingest.add_metric([], instances)
        yield ingest
        ingest_bytes = CounterMetricFamily("veritrace_ingest_bytes", "Bytes of DICOM instances indexed")
        ingest_bytes.add_metric([], stored_bytes)
        yield ingest_bytes
        by_state = GaugeMetricFamily("veritrace_studies", "Studies by assembly state", labels=["state"])
        for state, count in studies:
            by_state.add_metric([str(state)], count)
        yield by_state
        by_status = GaugeMetricFamily("veritrace_analyses", "Analyses by status", labels=["status"])
        for status, count in analyses:
            by_status.add_metric([str(status)], count)
        yield by_status
        drafted = CounterMetricFamily("veritrace_reports", "Draft reports stored")
        drafted.add_metric([], reports)
        yield drafted
        dead_family = GaugeMetricFamily("veritrace_dead_letters", "Dead-lettered tasks not yet requeued")
        dead_family.add_metric([], dead)
        yield dead_family

        history = self._history
        # bucket_counts are cumulative already (each counts "<= bound").
        cumulative = [
            (str(bound), count) for bound, count in zip(ANALYSIS_BUCKETS, history.bucket_counts, strict=True)
        ]
        cumulative.append(("+Inf", history.count))
        duration = HistogramMetricFamily(
            "veritrace_analysis_duration_seconds", "Analysis time, from start to stored draft"
        )
        duration.add_metric([], cumulative, sum_value=history.total_s)
        yield duration
        failures = CounterMetricFamily(
            "veritrace_verification_failures",
            "Statements or citations refused by the citation check and verifier, by kind",
            labels=["kind"],
        )
        for kind, count in sorted(history.verification_failures.items()):
            failures.add_metric([kind], count)
        yield failures

    def _advance_history(self, connection: sa.Connection) -> None:
        history = self._history
        query = (
            sa.select(Analysis.id, Analysis.started_at, Analysis.completed_at, Analysis.trace)
            .where(Analysis.status == "completed", Analysis.completed_at.is_not(None))
            .order_by(Analysis.completed_at, Analysis.id)
        )
        if history.watermark is not None:
            query = query.where(Analysis.completed_at >= history.watermark)
        for analysis_id, started_at, completed_at, trace in connection.execute(query):
            if completed_at == history.watermark and analysis_id in history.seen_at_watermark:
                continue
            seconds = None
            if started_at is not None:
                seconds = max(0.0, (completed_at - started_at).total_seconds())
            history.add(str(analysis_id), seconds, trace)
            if completed_at != history.watermark:
                history.watermark, history.seen_at_watermark = completed_at, set()
            history.seen_at_watermark.add(str(analysis_id))

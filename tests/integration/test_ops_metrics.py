"""`/metrics` on the real CDS app: hook latency per service, and the store-derived `veritrace_*` families."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cds.observability.instrument import instrument_api
from integrations.celery_app import make_celery
from integrations.ops.queue_depth import queue_depths
from integrations.store.models import Analysis
from tests.integration.cds_support import (
    PUBLIC_BASE,
    build_app,
    hook_body,
    make_store,
    searchset,
    seed_report,
)

SERVICE_URL = "/cds-services/veritrace-patient-view"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_endpoint_reports_hooks_store_ledger_and_queues(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    report = seed_report(store, patient_id="p-metrics")
    started = datetime(2026, 1, 1, tzinfo=UTC)
    with store.session_factory() as session:
        analysis = session.get(Analysis, report.analysis_id)
        assert analysis is not None
        analysis.started_at, analysis.completed_at = started, started + timedelta(seconds=7)
        analysis.trace = {
            "steps": [
                {"kind": "citations", "detail": {"dropped": ["fhir:Observation/x/_history/1", "img:9:0"]}},
                {"kind": "parse_error", "detail": {}},
            ]
        }
        session.commit()
    store.ledger.append("test.entry", "metrics-test", {"n": 1})
    broker = make_celery(f"sqla+sqlite:///{tmp_path / 'broker.db'}")
    app = build_app(tmp_path, store, signer=None)
    instrument_api(
        app, engine=store.engine, ledger_size=store.ledger.size, queue_depths=lambda: queue_depths(broker)
    )
    body = hook_body(
        "patient-view",
        {"userId": "Practitioner/u1", "patientId": "p-metrics"},
        {"finalReports": searchset(), "imagingStudies": searchset()},
    )
    with TestClient(app, base_url=PUBLIC_BASE) as client:
        for _ in range(3):
            assert client.post(SERVICE_URL, json=body).status_code == 200
        assert client.post("/cds-services/no-such-service", json=body).status_code == 404
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = _samples(response.text)

    hook = (("service", "veritrace-patient-view"), ("status_class", "2xx"))
    assert values[("veritrace_hook_latency_seconds_count", hook)] == 3
    assert not any(
        k[0].startswith("veritrace_hook") and ("service", "no-such-service") in k[1] for k in values
    )
    route = (("method", "POST"), ("route", "/cds-services/{service_id}"), ("status", "404"))
    assert values[("veritrace_http_requests_total", route)] == 1
    assert values[("veritrace_reports_total", ())] == 1
    assert values[("veritrace_analyses", (("status", "completed"),))] == 1
    assert values[("veritrace_analysis_duration_seconds_count", ())] == 1
    assert values[("veritrace_analysis_duration_seconds_bucket", (("le", "5.0"),))] == 0
    assert values[("veritrace_analysis_duration_seconds_bucket", (("le", "10.0"),))] == 1
    assert values[("veritrace_analysis_duration_seconds_sum", ())] == 7
    assert values[("veritrace_verification_failures_total", (("kind", "unknown_citation"),))] == 2
    assert values[("veritrace_verification_failures_total", (("kind", "unparseable_output"),))] == 1
    assert values[("veritrace_ledger_size", ())] == store.ledger.size() >= 4  # + 3 hook entries
    assert values[("veritrace_queue_depth", (("queue", "gpu"),))] == 0
    assert values[("veritrace_ingest_instances_total", ())] == 0
    assert values[("veritrace_dead_letters", ())] == 0
    for source in ("database", "ledger", "broker"):
        assert values[("veritrace_metrics_source_up", (("source", source),))] == 1
    assert not any("p-metrics" in str(key) for key in values)  # no patient ids as label values


def test_a_failing_source_is_reported_not_fatal(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    app = build_app(tmp_path, store, signer=None)

    def broker_down() -> dict[str, int]:
        raise ConnectionRefusedError("broker down")

    instrument_api(app, engine=store.engine, ledger_size=store.ledger.size, queue_depths=broker_down)
    with TestClient(app, base_url=PUBLIC_BASE) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    values = _samples(response.text)
    assert values[("veritrace_metrics_source_up", (("source", "broker"),))] == 0
    assert values[("veritrace_metrics_source_up", (("source", "database"),))] == 1

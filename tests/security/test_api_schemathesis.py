"""Schemathesis over the whole API (CDS Hooks, health, audit review API, instrumented as deployed): no 5xx.

`tests/integration/test_cds_fuzz.py` covers the CDS paths in depth; this run takes every path the
OpenAPI schema lists, on the app with the metrics and tracing middleware the API process mounts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from cds.observability.instrument import instrument_api
from tests.integration.cds_support import build_app, make_store, seed_report

_home = Path(tempfile.mkdtemp(prefix="vt-sec-fuzz-"))
_store = make_store(_home)
seed_report(_store, patient_id="fuzz-sec", severity="critical")
_store.ledger.append("test.entry", "security-test", {"n": 1})
_app = build_app(_home, _store, None)
_app.state.cds.fetcher.timeout_s = 0.2
instrument_api(_app, engine=_store.engine, ledger_size=_store.ledger.size)
schema = schemathesis.openapi.from_asgi("/openapi.json", _app)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_whole_api_never_5xx(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])

"""SQL injection and path traversal probes on every parameter the API declares, on PostgreSQL.

Each probe goes into every path, query and header parameter and into the string fields of the request
bodies. The API must answer without a 5xx, without echoing database or file internals, and leave every
table as it was (no statement of the probe ran).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from integrations.dicom.spool import Spool
from tests.integration.cds_support import PUBLIC_BASE, Store, build_app, make_store, seed_report

pytestmark = pytest.mark.postgres

SQL_PROBES = [
    "' OR '1'='1",
    "1; DROP TABLE audit_entries; --",
    "1' UNION SELECT payload FROM audit_entries --",
    "'); DELETE FROM reports; --",
    "1 OR 1=1",
]
PATH_PROBES = [
    "../../../../etc/passwd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "....//....//etc/passwd",
    "/etc/passwd",
]
LEAKS = re.compile(r"root:x:0:0|syntax error|psycopg|sqlalchemy|Traceback|UndefinedTable", re.IGNORECASE)


@pytest.fixture
def store(tmp_path: Path, postgres_url: str) -> Iterator[Store]:
    store = make_store(tmp_path, postgres_url)
    seed_report(store, patient_id="probe-patient")
    store.ledger.append("test.entry", "security-test", {"n": 1})
    yield store
    store.engine.dispose()


def _table_counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as connection:
        names = inspect(connection).get_table_names()
        return {
            name: int(connection.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one())
            for name in names
        }


def _bodies(probe: str) -> dict[str, dict[str, Any]]:
    return {
        "/cds-services/{service_id}": {
            "hook": probe,
            "hookInstance": probe,
            "fhirServer": probe,
            "context": {"userId": probe, "patientId": probe, "encounterId": probe},
            "prefetch": {"patient": None},
        },
        "/cds-services/{service_id}/feedback": {
            "feedback": [
                {
                    "card": probe,
                    "outcome": probe,
                    "outcomeTimestamp": probe,
                    "acceptedSuggestions": [{"id": probe}],
                }
            ]
        },
    }


def test_every_parameter_resists_sql_injection_and_path_traversal(tmp_path: Path, store: Store) -> None:
    app = build_app(tmp_path, store, None)
    app.state.cds.fetcher.timeout_s = 0.2
    before = _table_counts(store)
    operations = [
        (method.upper(), path, operation.get("parameters", []))
        for path, methods in app.openapi()["paths"].items()
        for method, operation in methods.items()
    ]
    probes = 0
    with TestClient(app, base_url=PUBLIC_BASE) as client:
        for probe in SQL_PROBES + PATH_PROBES:
            for method, template, parameters in operations:
                path = template
                query: dict[str, str] = {}
                headers: dict[str, str] = {}
                for parameter in parameters:
                    if parameter["in"] == "path":
                        path = path.replace("{" + parameter["name"] + "}", quote(probe, safe=""))
                    elif parameter["in"] == "query":
                        query[parameter["name"]] = probe
                    elif parameter["in"] == "header":
                        headers[parameter["name"]] = f"Bearer {probe}"
                body = _bodies(probe).get(template)
                response = client.request(method, path, params=query, headers=headers, json=body)
                probes += 1
                assert response.status_code < 500, (method, template, probe, response.text[:300])
                assert not LEAKS.search(response.text), (method, template, probe, response.text[:300])
        # Traversal in the raw URL as well, outside any declared parameter.
        for probe in PATH_PROBES:
            response = client.get(f"/{probe}")
            assert response.status_code in {400, 404} and not LEAKS.search(response.text)
    assert probes == len(operations) * (len(SQL_PROBES) + len(PATH_PROBES))
    after = _table_counts(store)
    assert set(after) == set(before), "a table appeared or disappeared"
    changed = {name for name in before if after[name] != before[name]}
    # Only the append-only audit tables and the JWT replay cache may grow (each probe is audited).
    assert changed <= {"audit_entries", "audit_nodes", "audit_payloads", "cds_seen_jti", "cards"}, changed
    assert after["reports"] == before["reports"] and after["studies"] == before["studies"]


@pytest.mark.parametrize(
    "probe", ["../../../../etc/passwd", "objects/../../outside.dcm", "/etc/passwd", "objects/../../../tmp/x"]
)
def test_spool_paths_cannot_escape_the_root(tmp_path: Path, probe: str) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    with pytest.raises(ValueError, match="escapes the spool root"):
        spool.absolute(probe)

"""PostgreSQL unavailable during ingest: the SCP refuses each instance, the PACS's resend succeeds.

The shared server stays up; the test database alone is closed to connections (`ALLOW_CONNECTIONS false`
and its sessions terminated), which is what the gateway sees when its database fails over.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

from cds.demo_study import build_demo_ct_study, store_instances
from integrations.dicom.status import STATUS_PROCESSING_FAILURE, STATUS_SUCCESS
from integrations.store.models import Instance
from tests.conftest import PG_ADMIN_DSN
from tests.fault.harness import Deployment

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


def _set_connections(database: str, allowed: bool) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')
        if not allowed:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )


def _send(port: int, paths: list[Path]) -> list[int]:
    return store_instances(paths, host="127.0.0.1", port=port, called_ae="VERITRACE", calling_ae="TEST_PACS")


def test_scp_refuses_during_outage_and_resend_succeeds(deployment: Deployment) -> None:
    settings = deployment.settings()
    database = deployment.engine.url.database
    assert database is not None
    deployment.spawn("dicom", "dicom")
    deployment.wait_dicom(settings.dicom_port)
    paths = build_demo_ct_study(deployment.home / "incoming", patient_id="vt-fault-pg", slices=3)

    _set_connections(database, allowed=False)
    try:
        statuses = _send(settings.dicom_port, paths)
    finally:
        _set_connections(database, allowed=True)
    assert statuses == [STATUS_PROCESSING_FAILURE] * len(paths)

    assert _send(settings.dicom_port, paths) == [STATUS_SUCCESS] * len(paths)
    spool = settings.dicom_config().spool_dir
    with deployment.session() as session:
        indexed = set(session.scalars(select(Instance.spool_path)))
    on_disk = {str(path.relative_to(spool)) for path in (spool / "objects").rglob("*.dcm")}
    assert len(indexed) == len(paths)
    assert on_disk == indexed, "a spool file without an index row (orphan) or a row without its file"
    assert not any((spool / "tmp").iterdir())

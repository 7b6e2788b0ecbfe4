"""PostgreSQL unavailable during ingest: what was acknowledged gets indexed, the rest is refused and resent.

The SCP acknowledges an instance once it is spooled and journaled; the index row is committed by the
dicom process's indexer thread. The contract while the database is down:
- an instance acknowledged before the indexer noticed the outage stays acknowledged and is indexed when
  the database returns (the indexer retries with backoff);
- once the indexer's commits fail, new instances are refused before anything is spooled, with the
  transient "processing failure" status (0x0110) the SCP has always answered for a failed index write;
- the PACS's resend succeeds, and the spool and the index agree: no orphan file, no row without its file,
  nothing left under `tmp/`.

The shared server stays up; the test database alone is closed to connections (`ALLOW_CONNECTIONS false`
and its sessions terminated), which is what the gateway sees when its database fails over.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

from cds.demo_study import build_demo_ct_study, store_instances
from integrations.dicom.spool import Spool
from integrations.dicom.status import STATUS_PROCESSING_FAILURE, STATUS_SUCCESS
from integrations.store.models import Instance
from tests.conftest import PG_ADMIN_DSN
from tests.fault.harness import Deployment, wait_until

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


def _indexed(deployment: Deployment) -> set[str]:
    with deployment.session() as session:
        return set(session.scalars(select(Instance.spool_path)))


def _spooled(spool: Path) -> set[str]:
    return {str(path.relative_to(spool)) for path in (spool / "objects").rglob("*.dcm")}


def test_scp_refuses_during_outage_and_resend_succeeds(deployment: Deployment) -> None:
    settings = deployment.settings()
    database = deployment.engine.url.database
    assert database is not None
    deployment.spawn("dicom", "dicom")
    deployment.wait_dicom(settings.dicom_port)
    paths = build_demo_ct_study(deployment.home / "incoming", patient_id="vt-fault-pg", slices=4)
    spool = settings.dicom_config().spool_dir

    _set_connections(database, allowed=False)
    try:
        # Before any commit has failed the SCP cannot know: the first instance is acknowledged.
        assert _send(settings.dicom_port, paths[:1]) == [STATUS_SUCCESS]
        deployment.wait_log("dicom", "index writes failing")
        assert _send(settings.dicom_port, paths[1:]) == [STATUS_PROCESSING_FAILURE] * (len(paths) - 1)
        assert len(_spooled(spool)) == 1, "a refused instance was spooled"
    finally:
        _set_connections(database, allowed=True)

    # The indexer's retry commits the acknowledged instance once the database is back.
    deployment.wait_log("dicom", "index writes succeed again")
    assert _indexed(deployment) == _spooled(spool)

    # The PACS resends the study: the refused instances are stored, the first one is a duplicate.
    assert _send(settings.dicom_port, paths) == [STATUS_SUCCESS] * len(paths)
    wait_until(lambda: len(_indexed(deployment)) == len(paths), timeout_s=60, what="the resent rows")
    indexed = _indexed(deployment)
    assert _spooled(spool) == indexed, "a spool file without an index row (orphan) or a row without its file"
    assert Spool(spool).unfinished_writes() == []

"""Migrations upgrade an empty database to head on SQLite and PostgreSQL, and are idempotent."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from integrations.store.config import StoreConfig
from integrations.store.engine import make_engine
from integrations.store.migrate import upgrade_database

STORE_TABLES = {"studies", "instances", "analyses", "reports", "cards", "feedback", "cds_seen_jti"}


@pytest.mark.postgres
def test_upgrade_from_empty_on_both_databases(database_url: str) -> None:
    engine = make_engine(StoreConfig(database_url=database_url))
    try:
        upgrade_database(engine)
        upgrade_database(engine)  # a second run at every process start must be a no-op
        tables = set(inspect(engine).get_table_names())
        assert tables >= STORE_TABLES | {"alembic_version", "audit_alembic_version"}
        assert any(name.startswith("ledger") or name.startswith("audit") for name in tables - STORE_TABLES)
    finally:
        engine.dispose()

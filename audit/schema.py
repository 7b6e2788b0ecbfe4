"""Create or upgrade the ledger's tables with the ledger's own Alembic migrations."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy
from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def upgrade_ledger_schema(engine: sqlalchemy.Engine) -> None:
    """Bring the ledger tables and their append-only triggers to the latest revision. Idempotent.

    On SQLite it also switches the database file to WAL, so readers (proofs, the review API) never
    wait on the sequencer's write lock.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "audit@head")
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")

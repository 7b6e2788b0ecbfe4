"""Alembic environment for the audit ledger's own migrations.

Run only through ``audit.schema.upgrade_ledger_schema``, which hands in a live connection. The version
table is ``audit_alembic_version`` so these migrations live beside the main application's in one database.
"""

from __future__ import annotations

from alembic import context

VERSION_TABLE = "audit_alembic_version"

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()

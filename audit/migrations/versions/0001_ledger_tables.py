"""Ledger tables and the triggers that make them append-only.

Revision ID: audit_0001
Revises:
Create Date: 2025-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0001"
down_revision = None
branch_labels = ("audit",)
depends_on = None

APPEND_ONLY_TABLES = ("audit_entries", "audit_nodes", "audit_payloads", "audit_checkpoints")
LeafIndex = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("leaf_index", LeafIndex, primary_key=True, autoincrement=False),
        sa.Column("recorded_at", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("patient_ref", sa.String(256)),
        sa.Column("study_uid", sa.String(64)),
        sa.Column("payload_digest", sa.String(71), nullable=False),
        sa.Column("payload", sa.Text),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.CheckConstraint("leaf_index >= 0", name="ck_audit_entries_leaf_index"),
    )
    op.create_index("ix_audit_entries_patient_ref", "audit_entries", ["patient_ref"])
    op.create_index("ix_audit_entries_study_uid", "audit_entries", ["study_uid"])
    op.create_table(
        "audit_nodes",
        sa.Column("level", sa.SmallInteger, primary_key=True),
        sa.Column("node_index", sa.BigInteger, primary_key=True),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.CheckConstraint("level >= 1 AND node_index >= 0", name="ck_audit_nodes_position"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "audit_payloads",
        sa.Column("digest", sa.String(71), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", LeafIndex, primary_key=True, autoincrement=False),
        sa.Column("tree_size", sa.BigInteger, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger, nullable=False, unique=True),
        sa.Column("key_id", sa.String(8), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        _postgres_append_only()
    else:
        _sqlite_append_only()


def _postgres_append_only() -> None:
    op.execute(
        """
        CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit ledger table % is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    for table in APPEND_ONLY_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()"
        )


def _sqlite_append_only() -> None:
    for table in APPEND_ONLY_TABLES:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'audit ledger table {table} is append-only: {action} refused');"
                " END"
            )


def downgrade() -> None:
    raise NotImplementedError("the audit ledger is append-only: its tables are never dropped by a migration")

"""Review app sessions, saved searches and pending sign-ins, shared by API replicas.

Revision ID: audit_0002
Revises: audit_0001
Create Date: 2025-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0002"
down_revision = "audit_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_review_sessions",
        sa.Column("id_sha256", sa.String(64), primary_key=True),
        sa.Column("reviewer", sa.Text, nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_audit_review_sessions_expires_at", "audit_review_sessions", ["expires_at"])
    op.create_table(
        "audit_review_searches",
        sa.Column("session_sha256", sa.String(64), primary_key=True),
        sa.Column("token", sa.String(16), primary_key=True),
        sa.Column("filters", sa.Text, nullable=False),
        sa.Column("saved_at", sa.Float, nullable=False),
    )
    op.create_table(
        "audit_review_logins",
        sa.Column("state_sha256", sa.String(64), primary_key=True),
        sa.Column("code_verifier", sa.String(128), nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("return_to", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_audit_review_logins_expires_at", "audit_review_logins", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_audit_review_logins_expires_at", table_name="audit_review_logins")
    op.drop_table("audit_review_logins")
    op.drop_table("audit_review_searches")
    op.drop_index("ix_audit_review_sessions_expires_at", table_name="audit_review_sessions")
    op.drop_table("audit_review_sessions")

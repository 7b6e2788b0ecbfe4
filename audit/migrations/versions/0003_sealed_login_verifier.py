"""Pending review sign-ins keep their PKCE verifier sealed (AES-256-GCM, ``audit.review.login_sealing``).

The table only ever holds sign-ins in flight (ten minutes at most), so it is recreated rather than
altered: a reviewer who was half-way through signing in during the upgrade clicks "sign in" again, and
no verifier stored in the clear survives the upgrade.

Revision ID: audit_0003
Revises: audit_0002
Create Date: 2025-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0003"
down_revision = "audit_0002"
branch_labels = None
depends_on = None

TABLE = "audit_review_logins"
INDEX = "ix_audit_review_logins_expires_at"


def _recreate(verifier_column: sa.Column[str]) -> None:
    op.drop_index(INDEX, table_name=TABLE)
    op.drop_table(TABLE)
    op.create_table(
        TABLE,
        sa.Column("state_sha256", sa.String(64), primary_key=True),
        verifier_column,
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("return_to", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index(INDEX, TABLE, ["expires_at"])


def upgrade() -> None:
    _recreate(sa.Column("code_verifier_sealed", sa.Text, nullable=False))


def downgrade() -> None:
    _recreate(sa.Column("code_verifier", sa.String(128), nullable=False))

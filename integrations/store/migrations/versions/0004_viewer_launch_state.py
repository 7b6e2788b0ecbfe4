"""viewer: pending SMART launches and open viewer sessions, shared by API replicas

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "viewer_launches",
        sa.Column("state_sha256", sa.String(length=64), nullable=False),
        sa.Column("iss", sa.Text(), nullable=False),
        sa.Column("launch", sa.Text(), nullable=True),
        sa.Column("report_id", sa.String(length=36), nullable=True),
        sa.Column("sealed_code_verifier", sa.LargeBinary(), nullable=True),
        sa.Column("authorization_endpoint", sa.Text(), nullable=False),
        sa.Column("token_endpoint", sa.Text(), nullable=False),
        sa.Column("auth_server_issuer", sa.Text(), nullable=True),
        sa.Column("jwks_uri", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("state_sha256"),
    )
    op.create_index("ix_viewer_launches_expires_at", "viewer_launches", ["expires_at"])
    op.create_table(
        "viewer_sessions",
        sa.Column("handle_sha256", sa.String(length=64), nullable=False),
        sa.Column("iss", sa.Text(), nullable=False),
        sa.Column("sealed_access_token", sa.LargeBinary(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("encounter_id", sa.String(length=64), nullable=True),
        sa.Column("fhir_user", sa.Text(), nullable=True),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("report_id", sa.String(length=36), nullable=False),
        sa.Column("card_uuid", sa.String(length=36), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("handle_sha256"),
    )
    op.create_index("ix_viewer_sessions_expires_at", "viewer_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_viewer_sessions_expires_at", table_name="viewer_sessions")
    op.drop_table("viewer_sessions")
    op.drop_index("ix_viewer_launches_expires_at", table_name="viewer_launches")
    op.drop_table("viewer_launches")

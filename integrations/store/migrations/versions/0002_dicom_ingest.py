"""dicom ingest: instance body part, analysis membership, SR exports

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("body_part", sa.String(length=64), nullable=True))

    op.create_table(
        "analysis_instances",
        sa.Column("analysis_id", sa.String(length=36), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["analysis_id"], ["analyses.id"]),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"]),
        sa.PrimaryKeyConstraint("analysis_id", "instance_id"),
    )

    op.create_table(
        "sr_exports",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("analysis_id", sa.String(length=36), nullable=False),
        sa.Column("destination", sa.String(length=128), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("spool_path", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["analysis_id"], ["analyses.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("analysis_id", "destination", name="uq_sr_export_destination"),
    )
    with op.batch_alter_table("sr_exports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sr_exports_analysis_id"), ["analysis_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sr_exports_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_sr_exports_next_attempt_at"), ["next_attempt_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sr_exports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sr_exports_next_attempt_at"))
        batch_op.drop_index(batch_op.f("ix_sr_exports_state"))
        batch_op.drop_index(batch_op.f("ix_sr_exports_analysis_id"))
    op.drop_table("sr_exports")
    op.drop_table("analysis_instances")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("body_part")

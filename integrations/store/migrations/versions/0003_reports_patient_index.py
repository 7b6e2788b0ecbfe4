"""reports: index for the patient-view draft lookup (patient, status, newest first)

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_reports_patient_status_created", "reports", ["patient_id", "status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_reports_patient_status_created", table_name="reports")

"""Worker claims with a lease (several worker processes on one job log), one row per version.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("claimed_by", sa.String(64)))
        jobs.add_column(sa.Column("lease_expires_at", sa.DateTime))
        jobs.create_index("ix_jobs_lease_expires_at", ["lease_expires_at"])
        jobs.create_index("ux_jobs_study_version", ["study_id", "version"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_index("ux_jobs_study_version")
        jobs.drop_index("ix_jobs_lease_expires_at")
        jobs.drop_column("lease_expires_at")
        jobs.drop_column("claimed_by")

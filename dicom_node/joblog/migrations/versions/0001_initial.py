"""The job log as single-node releases created it (before Alembic managed it).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("first_received_at", sa.DateTime, nullable=False),
        sa.Column("last_received_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16)),
        sa.Column("body_part", sa.String(64)),
        sa.Column("image_type", sa.String(128)),
        sa.Column("description", sa.String(256)),
        sa.Column("calling_ae", sa.String(16), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("received_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_instances_study_id", "instances", ["study_id"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("pipeline", sa.String(32)),
        sa.Column("modality", sa.String(16)),
        sa.Column("instance_count", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("model_name", sa.String(64)),
        sa.Column("model_version", sa.String(32)),
        sa.Column("summary", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("received_at", sa.DateTime, nullable=False),
        sa.Column("last_instance_at", sa.DateTime, nullable=False),
        sa.Column("queued_at", sa.DateTime),
        sa.Column("started_at", sa.DateTime),
        sa.Column("processed_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_jobs_study_id", "jobs", ["study_id"])
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_updated_at", "jobs", ["updated_at"])
    op.create_table(
        "job_sources",
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("instance_id", sa.Integer, sa.ForeignKey("instances.id"), nullable=False),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("destination", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime, nullable=False),
        sa.Column("last_status", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("sent_at", sa.DateTime),
    )
    op.create_index("ix_deliveries_job_id", "deliveries", ["job_id"])
    op.create_index("ix_deliveries_state", "deliveries", ["state"])
    op.create_table(
        "rejections",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("calling_ae", sa.String(16), nullable=False),
        sa.Column("study_instance_uid", sa.String(64)),
        sa.Column("sop_instance_uid", sa.String(64)),
        sa.Column("sop_class_uid", sa.String(64)),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("quarantine_path", sa.Text),
    )
    op.create_index("ix_rejections_at", "rejections", ["at"])


def downgrade() -> None:
    for table in ("rejections", "deliveries", "job_sources", "jobs", "instances", "studies"):
        op.drop_table(table)

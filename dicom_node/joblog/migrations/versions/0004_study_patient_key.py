"""One patient per study: the key of the patient identity each study was opened with.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Studies filed before have no key: the next instance received sets it.
    with op.batch_alter_table("studies") as studies:
        studies.add_column(sa.Column("patient_key", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("studies") as studies:
        studies.drop_column("patient_key")

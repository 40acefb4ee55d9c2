"""ViewPosition of each instance, for the routing table's view rule (frontal radiographs only).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as instances:
        instances.add_column(sa.Column("view_position", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("instances") as instances:
        instances.drop_column("view_position")

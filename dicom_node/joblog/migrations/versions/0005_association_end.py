"""How the last association that sent instances of each job ended (released, interrupted, open):
an interrupted study waits for the sender's resend and is marked unfinished without one.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Jobs filed before have no record: they complete after the quiet period, as they did.
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("association_end", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("association_end")

"""Alembic environment: run by ``dicom_node.joblog.migrate`` on a connection it passes in."""

from __future__ import annotations

from alembic import context

from dicom_node.joblog.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

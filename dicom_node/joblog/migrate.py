"""The job log's schema version: Alembic migrations applied (``dicom-node db upgrade``) and
checked at start, so a node never runs against tables it does not know.

A SQLite file belongs to one node, which upgrades it itself when it starts.  A shared
(PostgreSQL) job log is upgraded once, by an admin, before new nodes start: a node finding
it behind, empty or at a revision from a newer release refuses to run and says why.

Files written before Alembic managed the schema (tables, no ``alembic_version``) are the
first revision: they are stamped, then upgraded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect

from dicom_node.errors import ConfigError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
# The revision of the tables that single-node releases created without Alembic.
BASELINE = "0001"


class SchemaError(ConfigError):
    """The job log's schema is missing, behind or unknown to this release."""


@dataclass(frozen=True)
class Upgrade:
    before: str | None  # None: an empty database
    after: str


def head() -> str:
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return _current(connection)


def upgrade(engine: Engine) -> Upgrade:
    """Apply every migration the database lacks (idempotent)."""
    with engine.begin() as connection:
        before = _current(connection)
        config = _config(connection)
        if before is None and inspect(connection).has_table("jobs"):
            command.stamp(config, BASELINE)
            before = BASELINE
        if before is not None and before not in _known():
            raise SchemaError(_unknown(engine, before))
        command.upgrade(config, "head")
    after = head()
    if before != after:
        log.info("job log schema upgraded from %s to %s", before or "empty", after)
    return Upgrade(before, after)


def check(engine: Engine) -> str:
    """Raise :class:`SchemaError` unless the database is at this release's head revision."""
    revision = current(engine)
    wanted = head()
    if revision == wanted:
        return revision
    where = describe(engine)
    if revision is None:
        raise SchemaError(
            f"the job log at {where} has no dicom-node schema: run `dicom-node db upgrade`"
        )
    if revision in _known():
        raise SchemaError(
            f"the job log at {where} is at schema revision {revision}, this release needs "
            f"{wanted}: run `dicom-node db upgrade` (once, from one host) before starting nodes"
        )
    raise SchemaError(_unknown(engine, revision))


def prepare(engine: Engine) -> None:
    """At start: a SQLite file is upgraded in place, a shared database only checked."""
    if engine.dialect.name == "sqlite":
        upgrade(engine)
    else:
        check(engine)


def describe(engine: Engine) -> str:
    """The database's URL without its password (for messages and logs)."""
    return engine.url.render_as_string(hide_password=True)


def _unknown(engine: Engine, revision: str | None) -> str:
    return (
        f"the job log at {describe(engine)} is at schema revision {revision}, which this "
        f"release does not know (written by a newer dicom-node?): refusing to run"
    )


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _known() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config

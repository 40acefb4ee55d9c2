"""The job log: studies, instances, jobs and deliveries, in one SQLite file (WAL mode) or a
PostgreSQL database shared by several node processes and hosts (``database_url``).

Shared by the SCP threads, the assembler, the worker, the sender and the admin CLI (possibly
other processes).  Every state change is one short transaction, so a crash at any point
leaves a log from which ``WorkQueue.reclaim_expired`` resumes.  It is split by who uses it:

=================  ====================  ===========================================
role               class                 used by
=================  ====================  ===========================================
intake             ``IntakeLog``         the C-STORE handler (``scp``)
assembly           ``AssemblyLog``       the quiet timers (``assembly``)
queue              ``WorkQueue``         the worker
deliveries         ``DeliveryLog``       the result sender (``scu``)
admin              ``AdminLog``          ``dicom-node jobs/requeue``, metrics, health
=================  ====================  ===========================================

Tables, engine and the job state machine live in ``schema``, their versions in ``migrate``;
what goes in and out are the plain records of ``records`` (no ORM object leaves its session).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Engine, text

from dicom_node.joblog import migrate
from dicom_node.joblog.assembly import AssemblyLog
from dicom_node.joblog.deliveries import DeliveryLog
from dicom_node.joblog.intake import IntakeLog
from dicom_node.joblog.queue import WorkQueue
from dicom_node.joblog.reporting import AdminLog
from dicom_node.joblog.schema import make_engine, sqlite_url

# A C-STORE waits at most this long for a locked job log, then is refused with 0xA700
# (the sender retries later) instead of holding the association.
INTAKE_BUSY_TIMEOUT_SECONDS = 2.0


class JobLog:
    """One engine per use, one object per role; built once per process, shared by threads."""

    def __init__(self, engine: Engine, intake_engine: Engine | None = None) -> None:
        self.engine = engine
        self._intake_engine = intake_engine
        self.intake = IntakeLog(intake_engine or engine)
        self.assembly = AssemblyLog(engine)
        self.queue = WorkQueue(engine)
        self.deliveries = DeliveryLog(engine)
        self.admin = AdminLog(engine)

    @classmethod
    def open(cls, target: Path | str) -> JobLog:
        """The job log at a SQLite path or a database URL, its schema upgraded (SQLite) or
        checked (a shared database: ``migrate.SchemaError`` unless at this release's head)."""
        url = sqlite_url(target) if isinstance(target, Path) else target
        engine = make_engine(url)
        try:
            migrate.prepare(engine)
        except Exception:
            engine.dispose()
            raise
        return cls(engine, make_engine(url, INTAKE_BUSY_TIMEOUT_SECONDS))

    @property
    def shared(self) -> bool:
        return self.engine.dialect.name != "sqlite"

    def writable(self, timeout_seconds: float = 0.5) -> bool:
        """Whether a write could start now (False while another process holds SQLite's lock,
        or while the database server cannot be reached)."""
        if self.shared:
            try:
                with self.engine.connect() as db:
                    db.execute(text("SELECT 1"))
            except Exception:
                return False
            return True
        database = self.engine.url.database
        if not database or database == ":memory:":
            return True
        try:
            # Its own connection: the pooled ones keep their longer busy timeout.
            connection = sqlite3.connect(database, timeout=timeout_seconds)
            try:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute("ROLLBACK")
            finally:
                connection.close()
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        self.engine.dispose()
        if self._intake_engine is not None:
            self._intake_engine.dispose()


__all__ = ["AdminLog", "AssemblyLog", "DeliveryLog", "IntakeLog", "JobLog", "WorkQueue"]

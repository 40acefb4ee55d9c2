"""The job log: studies, instances, jobs and deliveries in one SQLite file (WAL mode).

Shared by the SCP threads, the assembler, the worker, the sender and the admin CLI (possibly
another process).  Every state change is one short transaction, so a crash at any point
leaves a log from which ``queue.recover`` resumes.  It is split by who uses it:

=================  ====================  ===========================================
role               class                 used by
=================  ====================  ===========================================
intake             ``IntakeLog``         the C-STORE handler (``scp``)
assembly           ``AssemblyLog``       the quiet timers (``assembly``)
queue              ``WorkQueue``         the worker
deliveries         ``DeliveryLog``       the result sender (``scu``)
admin              ``AdminLog``          ``dicom-node jobs/requeue``, metrics, health
=================  ====================  ===========================================

Tables, engine and the job state machine live in ``schema``; what goes in and out are the
plain records of ``records`` (no ORM object leaves its session).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Engine

from dicom_node.joblog.assembly import AssemblyLog
from dicom_node.joblog.deliveries import DeliveryLog
from dicom_node.joblog.intake import IntakeLog
from dicom_node.joblog.queue import WorkQueue
from dicom_node.joblog.reporting import AdminLog
from dicom_node.joblog.schema import make_engine

# A C-STORE waits at most this long for a locked job log, then is refused with 0xA700
# (the sender retries later) instead of holding the association.
INTAKE_BUSY_TIMEOUT_SECONDS = 2.0


class JobLog:
    """One engine per use, one object per role; built once per process, shared by threads."""

    def __init__(
        self, engine: Engine, intake_engine: Engine | None = None, path: Path | None = None
    ) -> None:
        self.engine = engine
        self.path = path
        self._intake_engine = intake_engine
        self.intake = IntakeLog(intake_engine or engine)
        self.assembly = AssemblyLog(engine)
        self.queue = WorkQueue(engine)
        self.deliveries = DeliveryLog(engine)
        self.admin = AdminLog(engine)

    @classmethod
    def open(cls, path: Path) -> JobLog:
        return cls(make_engine(path), make_engine(path, INTAKE_BUSY_TIMEOUT_SECONDS), path)

    def writable(self, timeout_seconds: float = 0.5) -> bool:
        """Whether a write could start now (False while another process holds a lock)."""
        if self.path is None:
            return True
        try:
            connection = sqlite3.connect(self.path, timeout=timeout_seconds)
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

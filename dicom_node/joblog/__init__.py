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

from pathlib import Path

from sqlalchemy import Engine

from dicom_node.joblog.assembly import AssemblyLog
from dicom_node.joblog.deliveries import DeliveryLog
from dicom_node.joblog.intake import IntakeLog
from dicom_node.joblog.queue import WorkQueue
from dicom_node.joblog.reporting import AdminLog
from dicom_node.joblog.schema import make_engine


class JobLog:
    """One engine, one object per role; built once per process and shared by threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.intake = IntakeLog(engine)
        self.assembly = AssemblyLog(engine)
        self.queue = WorkQueue(engine)
        self.deliveries = DeliveryLog(engine)
        self.admin = AdminLog(engine)

    @classmethod
    def open(cls, path: Path) -> JobLog:
        return cls(make_engine(path))

    def close(self) -> None:
        self.engine.dispose()


__all__ = ["AdminLog", "AssemblyLog", "DeliveryLog", "IntakeLog", "JobLog", "WorkQueue"]

"""The job log's tables, its engine and the job state machine: the one place for all three.

Job states::

    received -> queued -> running -> sending -> done
          \\-> ignored      |  \\-> done (no PACS)  \\-> dead
                            +-> failed / ignored
                            +-> queued (its worker was lost: lease expired, node restarted)
    failed, dead -> queued (requeue)

``received``: instances are arriving, the quiet timer is armed.  ``ignored``: routing found
no pipeline, or the pipeline found the study not analysable (reason in ``error``).
``failed``: the pipeline raised, or the job lost its worker ``job_max_attempts`` times.
``dead``: results could not be delivered after all retries.
Every change of a job's state goes through :func:`check_transition`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, ForeignKey, Index, Select, String, Text, create_engine, event
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from dicom_node.errors import NodeError


class JobState(StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"
    IGNORED = "ignored"
    DEAD = "dead"


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"


class AssociationEnd(StrEnum):
    """How the last association (or STOW-RS request) that sent instances of a job ended."""

    OPEN = "open"  # still sending, or the node stopped before it ended
    RELEASED = "released"  # A-RELEASE, or a STOW-RS request read to its end
    INTERRUPTED = "interrupted"  # A-ABORT, a dropped connection, a timeout


# The sender may not have finished: such a study waits ``interrupted_study_hold_seconds`` for a
# resend, and is marked unfinished if analysed without one.  (An ``open`` end with no local
# association sending belongs to an association the node never saw end.)
UNRELEASED_ENDS = frozenset({AssociationEnd.OPEN, AssociationEnd.INTERRUPTED})

# Pseudo-state of a rejection row in listings (a refused data set never becomes a job).
REJECTED = "rejected"

FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.IGNORED, JobState.DEAD})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.RECEIVED: frozenset({JobState.QUEUED, JobState.IGNORED}),
    JobState.QUEUED: frozenset({JobState.RUNNING}),
    JobState.RUNNING: frozenset(
        {JobState.SENDING, JobState.DONE, JobState.FAILED, JobState.IGNORED, JobState.QUEUED}
    ),
    JobState.SENDING: frozenset({JobState.DONE, JobState.DEAD}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.IGNORED: frozenset(),
    JobState.DEAD: frozenset({JobState.QUEUED}),
}


class InvalidTransition(NodeError):
    """A job was asked to move between two states the state machine does not connect."""


def check_transition(old: str, new: JobState) -> JobState:
    """Raise unless ``old -> new`` is in :data:`TRANSITIONS`; returns ``new``."""
    if new not in TRANSITIONS[JobState(old)]:
        raise InvalidTransition(f"job state {old} cannot become {new}")
    return new


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    first_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # The first instance's patient key (``InstanceRecord.patient_key``): later instances must match.
    patient_key: Mapped[str | None] = mapped_column(String(64))
    instances: Mapped[list[Instance]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study", order_by="Job.version")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    image_type: Mapped[str | None] = mapped_column(String(128))
    view_position: Mapped[str | None] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(256))
    calling_ae: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int]
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    study: Mapped[Study] = relationship(back_populates="instances")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    version: Mapped[int] = mapped_column(default=1)
    state: Mapped[str] = mapped_column(String(16), index=True, default=JobState.RECEIVED)
    pipeline: Mapped[str | None] = mapped_column(String(32))
    modality: Mapped[str | None] = mapped_column(String(16))
    instance_count: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    model_name: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(32))
    summary: Mapped[str | None] = mapped_column(Text)  # short, patient-free result text
    # ``AssociationEnd`` of the last association that sent instances; None: not recorded (filed
    # by an intake node without the assembly role, or before schema 0005).
    association_end: Mapped[str | None] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)  # claims by a worker
    # The worker running (or last to run) the job, and until when its claim holds unless it
    # sends a heartbeat; a claim past this time is lost and the job goes back to the queue.
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_instance_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime | None]
    processed_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    study: Mapped[Study] = relationship(back_populates="jobs")
    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="job", cascade="all, delete-orphan"
    )
    sources: Mapped[list[JobSource]] = relationship(
        cascade="all, delete-orphan", order_by="JobSource.position"
    )
    # Two intake nodes filing the same study at once cannot both open its next version.
    __table_args__ = (Index("ux_jobs_study_version", "study_id", "version", unique=True),)


class JobSource(Base):
    """The instances routing chose for a job: decided once, at completion, used by the worker."""

    __tablename__ = "job_sources"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"))
    instance: Mapped[Instance] = relationship()


class Delivery(Base):
    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    destination: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), index=True, default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_status: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[dt.datetime | None]
    job: Mapped[Job] = relationship(back_populates="deliveries")


class Rejection(Base):
    __tablename__ = "rejections"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int]
    reason: Mapped[str] = mapped_column(Text)
    quarantine_path: Mapped[str | None] = mapped_column(Text)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_engine(url: str, busy_timeout_seconds: float = 30.0) -> Engine:
    """An engine for the job log at ``url`` (``sqlite:///...`` or ``postgresql+psycopg://...``).

    ``busy_timeout_seconds`` bounds how long a write waits for a lock another process holds.
    SQLite runs in WAL mode, so readers (``jobs --follow``) never block the SCP's writes.  The
    schema is not created here: ``joblog.migrate`` applies and checks it.
    """
    if url.startswith("sqlite"):
        return _sqlite_engine(url, busy_timeout_seconds)
    # pool_pre_ping: a connection the server (or a failover) dropped is replaced, not used.
    return create_engine(
        url,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": 10,
            "options": f"-c lock_timeout={int(busy_timeout_seconds * 1000)}",
        },
    )


def _sqlite_engine(url: str, busy_timeout_seconds: float) -> Engine:
    database = url.split("///", 1)[1] if "///" in url else ""
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout_seconds})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


class Store:
    """The engine and a session factory; each role of the job log is built on one."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def exists(self, query: Select[Any]) -> bool:
        """Whether ``query`` finds a row, read without a lock: idle polls look first, so they
        do not take SQLite's write lock (which the C-STORE handler waits for) for nothing."""
        with self.engine.connect() as db:
            return db.execute(query.limit(1)).first() is not None

    @contextmanager
    def session(self, lock: bool = False) -> Iterator[Session]:
        """One transaction.  ``lock``: it reads rows and then changes them depending on what
        it read (a claim, a completion), so on SQLite it takes the write lock first
        (``BEGIN IMMEDIATE``) - another process cannot change them in between.  PostgreSQL
        locks the rows themselves (``FOR UPDATE``) in the queries."""
        with self._sessions.begin() as session:
            if lock and self.engine.dialect.name == "sqlite":
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield session

"""The job log: SQLAlchemy models and queries for studies, instances, jobs, deliveries.

One SQLite file in WAL mode, shared by the SCP threads, the worker, the sender and the
admin CLI (possibly another process).  Every state change is one short transaction, so a
crash at any point leaves a log from which ``JobLog.recover`` resumes.

Job states::

    received -> queued -> running -> sending -> done
                   \\-> ignored       \\-> failed   \\-> dead

``received``: instances are arriving, the quiet timer is armed.  ``ignored``: routing found
no pipeline (reason in ``error``).  ``failed``: the pipeline raised.  ``dead``: results
could not be delivered after all retries.  Rejected datasets (never filed) are kept in
``rejections`` with the bytes in the quarantine folder.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    ForeignKey,
    String,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

RECEIVED, QUEUED, RUNNING, SENDING = "received", "queued", "running", "sending"
DONE, FAILED, IGNORED, DEAD = "done", "failed", "ignored", "dead"
JOB_STATES = (RECEIVED, QUEUED, RUNNING, SENDING, DONE, FAILED, IGNORED, DEAD)
FINAL_STATES = (DONE, FAILED, IGNORED, DEAD)
REJECTED = "rejected"  # pseudo-state of a rejection row in listings

PENDING, SENT = "pending", "sent"  # delivery states (plus DEAD)


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
    state: Mapped[str] = mapped_column(String(16), index=True, default=RECEIVED)
    pipeline: Mapped[str | None] = mapped_column(String(32))
    modality: Mapped[str | None] = mapped_column(String(16))
    instance_count: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    model_name: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(32))
    summary: Mapped[str | None] = mapped_column(Text)  # short, patient-free result text
    attempts: Mapped[int] = mapped_column(default=0)
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


class Delivery(Base):
    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    destination: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), index=True, default=PENDING)
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


def make_engine(path: Path) -> Engine:
    """SQLite in WAL mode: readers (``jobs --follow``) never block the SCP's writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    Base.metadata.create_all(engine)
    return engine


@dataclass(frozen=True)
class InstanceRecord:
    """What the SCP learned about one stored instance (no patient data)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    body_part: str | None
    image_type: str | None
    description: str | None
    calling_ae: str
    path: str
    size_bytes: int


@dataclass(frozen=True)
class RecordOutcome:
    job_id: int
    study_instance_uid: str
    modality: str | None
    duplicate: bool
    # True while the job gathers instances: the quiet timer must be (re)armed.
    gathering: bool


@dataclass(frozen=True)
class JobRow:
    """One line of ``dicom-node jobs``: a job, or a rejected dataset."""

    job_id: int | None
    study_instance_uid: str | None
    version: int | None
    state: str
    pipeline: str | None
    modality: str | None
    instances: int
    error: str | None
    summary: str | None
    received_at: dt.datetime
    finished_at: dt.datetime | None
    updated_at: dt.datetime
    deliveries_sent: int = 0
    deliveries_total: int = 0
    queued_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    processed_at: dt.datetime | None = None

    def as_json(self) -> dict[str, Any]:
        def iso(value: dt.datetime | None) -> str | None:
            return value.isoformat(timespec="milliseconds") + "Z" if value else None

        return {
            "job_id": self.job_id,
            "study_instance_uid": self.study_instance_uid,
            "version": self.version,
            "state": self.state,
            "pipeline": self.pipeline,
            "modality": self.modality,
            "instances": self.instances,
            "error": self.error,
            "summary": self.summary,
            "received_at": iso(self.received_at),
            "queued_at": iso(self.queued_at),
            "started_at": iso(self.started_at),
            "processed_at": iso(self.processed_at),
            "finished_at": iso(self.finished_at),
            "updated_at": iso(self.updated_at),
            "deliveries_sent": self.deliveries_sent,
            "deliveries_total": self.deliveries_total,
        }


class JobLog:
    """All reads and writes of the job log; one instance per process, shared by threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, path: Path) -> JobLog:
        return cls(make_engine(path))

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # -- intake ---------------------------------------------------------------------------

    def record_instance(self, record: InstanceRecord) -> RecordOutcome:
        """File one received instance; open a new job version if the last one has moved on.

        A resent instance (same SOP Instance UID) replaces the stored file but does not
        start a new analysis by itself.  This runs on every C-STORE, so it uses Core
        statements in one short transaction rather than the ORM's unit of work.
        """
        now = utcnow()
        with self.engine.begin() as db:
            study_id = db.scalar(
                select(Study.id).where(Study.study_instance_uid == record.study_instance_uid)
            )
            if study_id is None:
                study_id = db.execute(
                    insert(Study).values(
                        study_instance_uid=record.study_instance_uid,
                        first_received_at=now,
                        last_received_at=now,
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
            else:
                db.execute(update(Study).where(Study.id == study_id).values(last_received_at=now))
            existing = db.scalar(
                select(Instance.id).where(Instance.sop_instance_uid == record.sop_instance_uid)
            )
            duplicate = existing is not None
            if existing is not None:
                db.execute(
                    update(Instance)
                    .where(Instance.id == existing)
                    .values(
                        path=record.path,
                        size_bytes=record.size_bytes,
                        received_at=now,
                        transfer_syntax_uid=record.transfer_syntax_uid,
                    )
                )
            else:
                db.execute(
                    insert(Instance).values(study_id=study_id, received_at=now, **_fields(record))
                )
            job = db.execute(
                select(Job.id, Job.state, Job.version, Job.modality)
                .where(Job.study_id == study_id)
                .order_by(Job.version.desc())
                .limit(1)
            ).first()
            if job is None or (job.state != RECEIVED and not duplicate):
                job_id = db.execute(
                    insert(Job).values(
                        study_id=study_id,
                        version=(job.version + 1) if job else 1,
                        state=RECEIVED,
                        modality=record.modality,
                        instance_count=db.scalar(
                            select(func.count(Instance.id)).where(Instance.study_id == study_id)
                        ),
                        received_at=now,
                        last_instance_at=now,
                        updated_at=now,
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
                return RecordOutcome(
                    job_id, record.study_instance_uid, record.modality, duplicate, True
                )
            if job.state == RECEIVED:
                db.execute(
                    update(Job)
                    .where(Job.id == job.id)
                    .values(
                        instance_count=Job.instance_count + (0 if duplicate else 1),
                        last_instance_at=now,
                        updated_at=now,
                    )
                )
            return RecordOutcome(
                job.id, record.study_instance_uid, job.modality, duplicate, job.state == RECEIVED
            )

    def record_rejection(
        self,
        calling_ae: str,
        status: int,
        reason: str,
        study_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        sop_class_uid: str | None = None,
        quarantine_path: str | None = None,
    ) -> None:
        with self.session() as session:
            session.add(
                Rejection(
                    calling_ae=calling_ae,
                    status=status,
                    reason=reason,
                    study_instance_uid=study_instance_uid,
                    sop_instance_uid=sop_instance_uid,
                    sop_class_uid=sop_class_uid,
                    quarantine_path=quarantine_path,
                )
            )

    # -- assembly and routing -------------------------------------------------------------

    def pending_received(self) -> list[tuple[int, str, str | None, dt.datetime]]:
        """Jobs still gathering instances: (job id, study UID, modality, last instance)."""
        with self.session() as session:
            rows = session.execute(
                select(Job.id, Study.study_instance_uid, Job.modality, Job.last_instance_at)
                .join(Study)
                .where(Job.state == RECEIVED)
            ).all()
            return [(r[0], r[1], r[2], r[3]) for r in rows]

    def received_job_for_study(self, study_instance_uid: str) -> Job | None:
        with self.session() as session:
            return session.scalar(
                select(Job)
                .join(Study)
                .where(Study.study_instance_uid == study_instance_uid, Job.state == RECEIVED)
            )

    def study_instances(self, job_id: int) -> list[Instance]:
        with self.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                return []
            return list(
                session.scalars(
                    select(Instance).where(Instance.study_id == job.study_id).order_by(Instance.id)
                )
            )

    def complete_job(
        self, job_id: int, pipeline: str | None, reason: str | None, quiet_before: dt.datetime
    ) -> bool:
        """Close intake of a ``received`` job: queue it for ``pipeline`` or mark it ignored.

        Only applies if no instance arrived after ``quiet_before`` (a late instance re-armed
        the timer); returns whether the job changed.
        """
        now = utcnow()
        with self.session() as session:
            job = session.get(Job, job_id)
            if job is None or job.state != RECEIVED or job.last_instance_at > quiet_before:
                return False
            job.instance_count = _count_instances(session, job.study_id)
            job.pipeline = pipeline
            job.updated_at = now
            if pipeline is None:
                job.state = IGNORED
                job.error = reason
                job.finished_at = now
            else:
                job.state = QUEUED
                job.queued_at = now
            return True

    # -- worker ---------------------------------------------------------------------------

    def claim_next_job(self) -> Job | None:
        """Atomically move the oldest queued job to ``running`` (safe across processes)."""
        with self.session() as session:
            job_id = session.scalar(
                select(Job.id).where(Job.state == QUEUED).order_by(Job.queued_at, Job.id).limit(1)
            )
            if job_id is None:
                return None
            now = utcnow()
            claimed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == QUEUED)
                .values(state=RUNNING, started_at=now, updated_at=now, attempts=Job.attempts + 1)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            job = session.get(Job, job_id)
            assert job is not None
            session.refresh(job)
            _ = job.study.study_instance_uid  # load before the session closes
            return job

    def job_study_uid(self, job_id: int) -> str:
        with self.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job.study.study_instance_uid

    def fail_job(self, job_id: int, error: str) -> None:
        self._finish(job_id, FAILED, error)

    def ignore_job(self, job_id: int, reason: str) -> None:
        self._finish(job_id, IGNORED, reason)

    def processed(
        self,
        job_id: int,
        model_name: str,
        model_version: str,
        summary: str,
        outputs: Sequence[tuple[str, str, str]],
        destination: str | None,
    ) -> None:
        """Record a successful analysis and one pending delivery per output file.

        ``outputs`` holds (SOP Instance UID, SOP Class UID, path).  Without a PACS the job is
        done once the files are written.
        """
        now = utcnow()
        with self.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            job.model_name = model_name
            job.model_version = model_version
            job.summary = summary
            job.processed_at = now
            job.updated_at = now
            job.error = None
            for delivery in list(job.deliveries):
                session.delete(delivery)
            if destination is None:
                job.state = DONE
                job.finished_at = now
                return
            job.state = SENDING
            for sop_uid, sop_class, path in outputs:
                job.deliveries.append(
                    Delivery(
                        sop_instance_uid=sop_uid,
                        sop_class_uid=sop_class,
                        path=path,
                        destination=destination,
                        next_attempt_at=now,
                    )
                )

    def _finish(self, job_id: int, state: str, error: str | None) -> None:
        now = utcnow()
        with self.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            job.state = state
            job.error = error
            job.finished_at = now
            job.updated_at = now

    # -- sender ---------------------------------------------------------------------------

    def due_deliveries(self, limit_jobs: int = 1) -> list[Delivery]:
        """Pending deliveries whose retry time has come, for the oldest due job(s)."""
        now = utcnow()
        with self.session() as session:
            job_ids = list(
                session.scalars(
                    select(Delivery.job_id)
                    .join(Job)
                    .where(
                        Delivery.state == PENDING,
                        Delivery.next_attempt_at <= now,
                        Job.state == SENDING,
                    )
                    .group_by(Delivery.job_id)
                    .order_by(func.min(Delivery.next_attempt_at))
                    .limit(limit_jobs)
                )
            )
            if not job_ids:
                return []
            return list(
                session.scalars(
                    select(Delivery).where(
                        Delivery.job_id.in_(job_ids),
                        Delivery.state == PENDING,
                        Delivery.next_attempt_at <= now,
                    )
                )
            )

    def delivery_sent(self, delivery_id: int, status: int) -> None:
        with self.session() as session:
            delivery = session.get(Delivery, delivery_id)
            assert delivery is not None
            delivery.state = SENT
            delivery.last_status = status
            delivery.error = None
            delivery.attempts += 1
            delivery.sent_at = utcnow()

    def delivery_failed(
        self, delivery_id: int, status: int | None, error: str, retry_at: dt.datetime | None
    ) -> None:
        """Count a failed attempt; ``retry_at`` None means give up (dead letter)."""
        with self.session() as session:
            delivery = session.get(Delivery, delivery_id)
            assert delivery is not None
            delivery.attempts += 1
            delivery.last_status = status
            delivery.error = error
            if retry_at is None:
                delivery.state = DEAD
            else:
                delivery.next_attempt_at = retry_at

    def settle_job(self, job_id: int) -> str:
        """After a send round: ``done`` when all delivered, ``dead`` when any gave up."""
        now = utcnow()
        with self.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            states = {d.state for d in job.deliveries}
            if job.state == SENDING and states <= {SENT}:
                job.state = DONE
                job.finished_at = now
                job.updated_at = now
            elif job.state == SENDING and DEAD in states and PENDING not in states:
                errors = sorted({d.error for d in job.deliveries if d.state == DEAD and d.error})
                job.state = DEAD
                job.error = "delivery failed: " + "; ".join(errors)
                job.finished_at = now
                job.updated_at = now
            return job.state

    # -- admin ----------------------------------------------------------------------------

    def requeue(
        self, job_ids: Sequence[int] = (), states: Sequence[str] = (FAILED, DEAD)
    ) -> list[int]:
        """Put failed/dead jobs back in the queue (all of them when ``job_ids`` is empty)."""
        now = utcnow()
        with self.session() as session:
            query = select(Job).where(Job.state.in_(states))
            if job_ids:
                query = query.where(Job.id.in_(job_ids))
            jobs = list(session.scalars(query))
            for job in jobs:
                job.state = QUEUED
                job.error = None
                job.queued_at = now
                job.finished_at = None
                job.updated_at = now
            return [job.id for job in jobs]

    def recover(self) -> list[int]:
        """After a crash: jobs caught ``running`` go back to the queue."""
        now = utcnow()
        with self.session() as session:
            jobs = list(session.scalars(select(Job).where(Job.state == RUNNING)))
            for job in jobs:
                job.state = QUEUED
                job.updated_at = now
            return [job.id for job in jobs]

    def job(self, job_id: int) -> Job | None:
        with self.session() as session:
            return session.get(Job, job_id)

    def job_rows(self, since: dt.datetime | None = None, limit: int | None = None) -> list[JobRow]:
        """Jobs and rejections, oldest first; ``since`` filters on last update."""
        with self.session() as session:
            sent = (
                select(Delivery.job_id, func.count(Delivery.id).label("total"))
                .group_by(Delivery.job_id)
                .subquery()
            )
            done = (
                select(Delivery.job_id, func.count(Delivery.id).label("sent"))
                .where(Delivery.state == SENT)
                .group_by(Delivery.job_id)
                .subquery()
            )
            query = (
                select(Job, Study.study_instance_uid, sent.c.total, done.c.sent)
                .join(Study)
                .outerjoin(sent, sent.c.job_id == Job.id)
                .outerjoin(done, done.c.job_id == Job.id)
            )
            rejects = select(Rejection)
            if since is not None:
                query = query.where(Job.updated_at > since)
                rejects = rejects.where(Rejection.at > since)
            rows = [
                JobRow(
                    job_id=job.id,
                    study_instance_uid=uid,
                    version=job.version,
                    state=job.state,
                    pipeline=job.pipeline,
                    modality=job.modality,
                    instances=job.instance_count,
                    error=job.error,
                    summary=job.summary,
                    received_at=job.received_at,
                    finished_at=job.finished_at,
                    updated_at=job.updated_at,
                    deliveries_sent=n_sent or 0,
                    deliveries_total=n_total or 0,
                    queued_at=job.queued_at,
                    started_at=job.started_at,
                    processed_at=job.processed_at,
                )
                for job, uid, n_total, n_sent in session.execute(query)
            ]
            rows += [
                JobRow(
                    job_id=None,
                    study_instance_uid=r.study_instance_uid,
                    version=None,
                    state=REJECTED,
                    pipeline=None,
                    modality=None,
                    instances=1,
                    error=f"{r.reason} (status 0x{r.status:04X}, from {r.calling_ae})",
                    summary=None,
                    received_at=r.at,
                    finished_at=r.at,
                    updated_at=r.at,
                )
                for r in session.scalars(rejects)
            ]
        rows.sort(key=lambda row: row.updated_at)
        return rows[-limit:] if limit else rows

    def state_counts(self) -> dict[str, int]:
        with self.session() as session:
            counts = dict(
                session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).all()
            )
            counts[REJECTED] = session.scalar(select(func.count(Rejection.id))) or 0
            return {state: int(counts.get(state, 0)) for state in (*JOB_STATES, REJECTED)}


def _count_instances(session: Session, study_id: int) -> int:
    return session.scalar(select(func.count(Instance.id)).where(Instance.study_id == study_id)) or 0


def _fields(record: InstanceRecord) -> dict[str, Any]:
    values = dict(record.__dict__)
    values.pop("study_instance_uid")
    return values

"""The job log as admins read and steer it: listings, counts, one job, requeue."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from dicom_node.joblog.records import JobRow
from dicom_node.joblog.schema import (
    REJECTED,
    Delivery,
    DeliveryState,
    Job,
    JobSource,
    JobState,
    Rejection,
    Store,
    Study,
    check_transition,
    utcnow,
)


class AdminLog(Store):
    def requeue(
        self,
        job_ids: Sequence[int] = (),
        states: Sequence[str] = (JobState.FAILED, JobState.DEAD),
    ) -> list[int]:
        """Put failed/dead jobs back in the queue (all of them when ``job_ids`` is empty)."""
        now = utcnow()
        with self.session(lock=True) as session:
            query = select(Job).where(Job.state.in_([JobState(s) for s in states]))
            if job_ids:
                query = query.where(Job.id.in_(job_ids))
            jobs = list(session.scalars(query))
            for job in jobs:
                job.state = check_transition(job.state, JobState.QUEUED)
                job.attempts = 0  # a fresh allowance of claims (job_max_attempts)
                job.error = None
                job.queued_at = now
                job.finished_at = None
                job.updated_at = now
            return [job.id for job in jobs]

    def job(self, job_id: int) -> JobRow | None:
        rows = self._rows(select_one=job_id)
        return rows[0] if rows else None

    def job_rows(self, since: dt.datetime | None = None, limit: int | None = None) -> list[JobRow]:
        """Jobs and rejections, oldest first; ``since`` filters on last update."""
        rows = self._rows(since=since)
        with self.session() as session:
            rejects = select(Rejection)
            if since is not None:
                rejects = rejects.where(Rejection.at > since)
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

    def _rows(
        self, since: dt.datetime | None = None, select_one: int | None = None
    ) -> list[JobRow]:
        with self.session() as session:
            total = _count_by_job(Delivery.job_id, Delivery.id)
            sent = _count_by_job(Delivery.job_id, Delivery.id, Delivery.state == DeliveryState.SENT)
            sources = _count_by_job(JobSource.job_id, JobSource.position)
            query = (
                select(Job, Study.study_instance_uid, total.c.n, sent.c.n, sources.c.n)
                .join(Study)
                .outerjoin(total, total.c.job_id == Job.id)
                .outerjoin(sent, sent.c.job_id == Job.id)
                .outerjoin(sources, sources.c.job_id == Job.id)
            )
            if since is not None:
                query = query.where(Job.updated_at > since)
            if select_one is not None:
                query = query.where(Job.id == select_one)
            return [
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
                    attempts=job.attempts,
                    source_count=n_sources or 0,
                    worker=job.claimed_by,
                )
                for job, uid, n_total, n_sent, n_sources in session.execute(query)
            ]

    def state_counts(self) -> dict[str, int]:
        with self.session() as session:
            counts = dict(
                session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).all()
            )
            counts[REJECTED] = session.scalar(select(func.count(Rejection.id))) or 0
            return {state: int(counts.get(state, 0)) for state in (*JobState, REJECTED)}


def _count_by_job(job_id: Any, counted: Any, *where: Any) -> Any:
    """A ``(job_id, n)`` subquery counting ``counted`` per job."""
    return select(job_id, func.count(counted).label("n")).where(*where).group_by(job_id).subquery()

"""The job log as the worker uses it: claim the next queued job, hold it, record how it ended.

Workers in several processes and hosts share one queue.  A claim takes the oldest queued
job with ``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL; on SQLite the transaction takes
the write lock first, ``BEGIN IMMEDIATE``), names the worker and sets a lease the worker's
heartbeat renews.  A lease that runs out means the worker is gone: the job goes
back to the queue, or to ``failed`` once it has been claimed ``max_attempts`` times.  Every
write that ends a job is fenced by the claim, so a worker that lost its claim (stalled past
its lease) cannot record a second set of results next to the new worker's.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dicom_node.joblog.assembly import stored_instance
from dicom_node.joblog.records import ClaimedJob, Reclaimed, ResultFile
from dicom_node.joblog.schema import (
    UNRELEASED_ENDS,
    Delivery,
    Job,
    JobState,
    Store,
    check_transition,
    utcnow,
)

log = logging.getLogger(__name__)


class WorkQueue(Store):
    def claim_next(self, worker: str, lease_seconds: float) -> ClaimedJob | None:
        """Move the oldest queued job to ``running`` for ``worker`` (one claimant only)."""
        if not self.exists(select(Job.id).where(Job.state == JobState.QUEUED)):
            return None
        with self.session(lock=True) as session:
            job = session.scalars(
                select(Job)
                .where(Job.state == JobState.QUEUED)
                .order_by(Job.queued_at, Job.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if job is None:
                return None
            now = utcnow()
            claimed = session.execute(
                update(Job)
                .where(Job.id == job.id, Job.state == JobState.QUEUED)
                .values(
                    state=check_transition(JobState.QUEUED, JobState.RUNNING),
                    started_at=now,
                    updated_at=now,
                    attempts=Job.attempts + 1,
                    claimed_by=worker,
                    lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
                )
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            session.refresh(job)
            return ClaimedJob(
                id=job.id,
                study_instance_uid=job.study.study_instance_uid,
                version=job.version,
                pipeline=job.pipeline,
                attempts=job.attempts,
                sources=tuple(stored_instance(source.instance) for source in job.sources),
                worker=worker,
                unfinished=job.association_end in UNRELEASED_ENDS,
            )

    def heartbeat(self, worker: str, lease_seconds: float) -> int:
        """Renew the leases of every job ``worker`` is running; returns how many."""
        with self.engine.begin() as db:
            renewed = db.execute(
                update(Job)
                .where(Job.state == JobState.RUNNING, Job.claimed_by == worker)
                .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_seconds))
            )
            return int(renewed.rowcount)

    def reclaim_expired(self, max_attempts: int, everyone: bool = False) -> list[Reclaimed]:
        """Jobs whose worker's lease ran out go back to the queue, or fail after
        ``max_attempts`` claims.  ``everyone``: every running job counts as lost (a node that
        owns its job log alone, starting after a crash)."""
        now = utcnow()
        lost = [Job.state == JobState.RUNNING]
        if not everyone:
            lost.append((Job.lease_expires_at < now) | Job.lease_expires_at.is_(None))
        if not self.exists(select(Job.id).where(*lost)):
            return []
        with self.session(lock=True) as session:
            query = select(Job).where(*lost).with_for_update(skip_locked=True)
            jobs = list(session.scalars(query))
            for job in jobs:
                holder = job.claimed_by or "a worker"
                if job.attempts >= max_attempts:
                    job.state = check_transition(job.state, JobState.FAILED)
                    job.error = (
                        f"its worker was lost {job.attempts} time(s) (last: {holder}, lease "
                        f"expired or node restarted); job_max_attempts is {max_attempts}"
                    )
                    job.finished_at = now
                    log.warning("job %d failed: worker lost %d time(s)", job.id, job.attempts)
                else:
                    job.state = check_transition(job.state, JobState.QUEUED)
                    job.queued_at = now
                    log.warning("job %d re-queued: its worker %s was lost", job.id, holder)
                job.lease_expires_at = None
                job.updated_at = now
            return [Reclaimed(job.id, job.state) for job in jobs]

    def fail(self, job_id: int, error: str, worker: str | None = None) -> bool:
        return self._finish(job_id, JobState.FAILED, error, worker)

    def ignore(self, job_id: int, reason: str, worker: str | None = None) -> bool:
        return self._finish(job_id, JobState.IGNORED, reason, worker)

    def processed(
        self,
        job_id: int,
        model_name: str,
        model_version: str,
        summary: str,
        outputs: Sequence[ResultFile],
        destination: str | None,
        worker: str | None = None,
    ) -> bool:
        """Record a successful analysis and one pending delivery per output file; False
        (nothing recorded) when ``worker`` no longer holds the job.

        Without a PACS the job is done once the files are written.
        """
        now = utcnow()
        with self.session(lock=True) as session:
            job = _held(session, job_id, worker)
            if job is None:
                return False
            job.model_name = model_name
            job.model_version = model_version
            job.summary = summary
            job.processed_at = now
            job.updated_at = now
            job.error = None
            job.lease_expires_at = None
            for delivery in list(job.deliveries):
                session.delete(delivery)
            if destination is None:
                job.state = check_transition(job.state, JobState.DONE)
                job.finished_at = now
                return True
            job.state = check_transition(job.state, JobState.SENDING)
            for output in outputs:
                job.deliveries.append(
                    Delivery(
                        sop_instance_uid=output.sop_instance_uid,
                        sop_class_uid=output.sop_class_uid,
                        path=output.path,
                        destination=destination,
                        next_attempt_at=now,
                    )
                )
            return True

    def _finish(self, job_id: int, state: JobState, error: str | None, worker: str | None) -> bool:
        now = utcnow()
        with self.session(lock=True) as session:
            job = _held(session, job_id, worker)
            if job is None:
                return False
            job.state = check_transition(job.state, state)
            job.error = error
            job.finished_at = now
            job.updated_at = now
            job.lease_expires_at = None
            return True


def _held(session: Session, job_id: int, worker: str | None) -> Job | None:
    """The job, locked, if ``worker`` still holds its claim (None: any running job)."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.state != JobState.RUNNING:
        return None
    if worker is not None and job.claimed_by != worker:
        return None
    return job

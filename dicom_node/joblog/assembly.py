"""The job log as study assembly uses it: gathering jobs, their instances, completion."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from dicom_node.joblog.records import INSTANCE_FIELDS, GatheringJob, StoredInstance
from dicom_node.joblog.schema import (
    UNRELEASED_ENDS,
    AssociationEnd,
    Instance,
    Job,
    JobSource,
    JobState,
    Store,
    check_transition,
    utcnow,
)


class AssemblyLog(Store):
    def gathering_jobs(self) -> list[GatheringJob]:
        """Jobs still receiving instances (their timers are re-armed at start)."""
        with self.session() as session:
            rows = session.execute(
                select(
                    Job.id, Job.state, Job.modality, Job.last_instance_at, Job.association_end
                ).where(Job.state == JobState.RECEIVED)
            ).all()
            return [GatheringJob(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def gathering_job(self, job_id: int) -> GatheringJob | None:
        with self.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                return None
            return GatheringJob(
                job.id, job.state, job.modality, job.last_instance_at, job.association_end
            )

    def record_association_end(self, job_ids: Iterable[int], end: AssociationEnd) -> None:
        """Record how the last association that sent instances of these jobs ended (``open``:
        one started sending).  Only jobs still gathering: a completed job keeps the end it
        was completed with."""
        ids = sorted(set(job_ids))
        if not ids:
            return
        with self.engine.begin() as db:
            db.execute(
                update(Job)
                .where(Job.id.in_(ids), Job.state == JobState.RECEIVED)
                .values(association_end=end)
            )

    def study_instances(self, job_id: int) -> list[StoredInstance]:
        """Every instance of the job's study, in arrival order."""
        with self.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                return []
            query = select(Instance).where(Instance.study_id == job.study_id).order_by(Instance.id)
            return [stored_instance(i) for i in session.scalars(query)]

    def complete_job(
        self,
        job_id: int,
        pipeline: str | None,
        source_ids: Sequence[int],
        reason: str | None,
        quiet_before: dt.datetime,
        held_before: dt.datetime | None = None,
    ) -> bool:
        """Close intake of a ``received`` job: queue it for ``pipeline`` with the instances
        routing chose (``source_ids``), or mark it ignored with ``reason``.

        Only applies if no instance arrived after ``quiet_before``, or after ``held_before``
        when the job's last association ended without release (a late instance re-armed the
        timer); returns whether the job changed.  The row is locked, and skipped when another
        assembler holds it: with several assembly nodes, one completes the study.
        """
        now = utcnow()
        with self.session(lock=True) as session:
            job = session.get(Job, job_id, with_for_update={"skip_locked": True})
            if job is None or job.state != JobState.RECEIVED:
                return False
            cutoff = quiet_before
            if held_before is not None and job.association_end in UNRELEASED_ENDS:
                cutoff = held_before
            if job.last_instance_at > cutoff:
                return False
            job.instance_count = _count_instances(session, job.study_id)
            job.pipeline = pipeline
            job.updated_at = now
            if pipeline is None:
                job.state = check_transition(job.state, JobState.IGNORED)
                job.error = reason
                job.finished_at = now
            else:
                job.state = check_transition(job.state, JobState.QUEUED)
                job.queued_at = now
                job.sources = [
                    JobSource(position=n, instance_id=instance_id)
                    for n, instance_id in enumerate(source_ids)
                ]
            return True


def stored_instance(instance: Instance) -> StoredInstance:
    """The row as a plain record (the study is loaded in the caller's session)."""
    return StoredInstance(
        study_instance_uid=instance.study.study_instance_uid,
        id=instance.id,
        **{name: getattr(instance, name) for name in INSTANCE_FIELDS},
    )


def _count_instances(session: Session, study_id: int) -> int:
    return session.scalar(select(func.count(Instance.id)).where(Instance.study_id == study_id)) or 0

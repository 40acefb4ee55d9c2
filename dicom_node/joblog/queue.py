"""The job log as the worker uses it: claim the next queued job, record how it ended."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update

from dicom_node.joblog.assembly import stored_instance
from dicom_node.joblog.records import ClaimedJob, ResultFile
from dicom_node.joblog.schema import Delivery, Job, JobState, Store, check_transition, utcnow


class WorkQueue(Store):
    def claim_next(self) -> ClaimedJob | None:
        """Atomically move the oldest queued job to ``running`` (safe across processes)."""
        with self.session() as session:
            job_id = session.scalar(
                select(Job.id)
                .where(Job.state == JobState.QUEUED)
                .order_by(Job.queued_at, Job.id)
                .limit(1)
            )
            if job_id is None:
                return None
            now = utcnow()
            claimed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED)
                .values(
                    state=check_transition(JobState.QUEUED, JobState.RUNNING),
                    started_at=now,
                    updated_at=now,
                    attempts=Job.attempts + 1,
                )
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            job = session.get(Job, job_id)
            assert job is not None
            session.refresh(job)
            return ClaimedJob(
                id=job.id,
                study_instance_uid=job.study.study_instance_uid,
                version=job.version,
                pipeline=job.pipeline,
                attempts=job.attempts,
                sources=tuple(stored_instance(source.instance) for source in job.sources),
            )

    def fail(self, job_id: int, error: str) -> None:
        self._finish(job_id, JobState.FAILED, error)

    def ignore(self, job_id: int, reason: str) -> None:
        self._finish(job_id, JobState.IGNORED, reason)

    def processed(
        self,
        job_id: int,
        model_name: str,
        model_version: str,
        summary: str,
        outputs: Sequence[ResultFile],
        destination: str | None,
    ) -> None:
        """Record a successful analysis and one pending delivery per output file.

        Without a PACS the job is done once the files are written.
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
                job.state = check_transition(job.state, JobState.DONE)
                job.finished_at = now
                return
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

    def recover(self) -> list[int]:
        """After a crash: jobs caught ``running`` go back to the queue."""
        now = utcnow()
        with self.session() as session:
            jobs = list(session.scalars(select(Job).where(Job.state == JobState.RUNNING)))
            for job in jobs:
                job.state = check_transition(job.state, JobState.QUEUED)
                job.updated_at = now
            return [job.id for job in jobs]

    def _finish(self, job_id: int, state: JobState, error: str | None) -> None:
        now = utcnow()
        with self.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            job.state = check_transition(job.state, state)
            job.error = error
            job.finished_at = now
            job.updated_at = now

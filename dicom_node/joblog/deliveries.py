"""The job log as the result sender uses it: due deliveries, their outcomes, the job's end."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from dicom_node.joblog.records import DueDelivery, SettledJob
from dicom_node.joblog.schema import (
    Delivery,
    DeliveryState,
    Job,
    JobState,
    Store,
    check_transition,
    utcnow,
)


class DeliveryLog(Store):
    def due(self, limit_jobs: int = 1, hold_seconds: float | None = None) -> list[DueDelivery]:
        """Pending deliveries whose retry time has come, for the oldest due job(s).

        ``hold_seconds`` (senders sharing the job log): the deliveries are claimed by moving
        their retry time that far ahead under a row lock, so no other sender takes them
        meanwhile; the outcome (``sent``/``failed``) replaces the hold, and a sender that
        dies holding them lets them fall due again once the hold is over.
        """
        now = utcnow()
        job_ids = self._due_jobs(now, limit_jobs)
        if not job_ids:
            return []
        # Only a hold writes: then the rows are read under the lock, and re-checked there.
        with self.session(lock=hold_seconds is not None) as session:
            query = select(Delivery).where(
                Delivery.job_id.in_(job_ids),
                Delivery.state == DeliveryState.PENDING,
                Delivery.next_attempt_at <= now,
            )
            if hold_seconds is not None:
                query = query.with_for_update(skip_locked=True)
            deliveries = list(session.scalars(query))
            if hold_seconds is not None:
                for delivery in deliveries:
                    delivery.next_attempt_at = now + dt.timedelta(seconds=hold_seconds)
            return [
                DueDelivery(d.id, d.job_id, d.sop_instance_uid, d.path, d.destination, d.attempts)
                for d in deliveries
            ]

    def _due_jobs(self, now: dt.datetime, limit: int) -> list[int]:
        """The jobs with the oldest due deliveries (read without a lock)."""
        with self.engine.connect() as db:
            return list(
                db.scalars(
                    select(Delivery.job_id)
                    .join(Job)
                    .where(
                        Delivery.state == DeliveryState.PENDING,
                        Delivery.next_attempt_at <= now,
                        Job.state == JobState.SENDING,
                    )
                    .group_by(Delivery.job_id)
                    .order_by(func.min(Delivery.next_attempt_at))
                    .limit(limit)
                )
            )

    def sent(self, delivery_id: int, status: int) -> None:
        with self.session() as session:
            delivery = session.get(Delivery, delivery_id)
            assert delivery is not None
            delivery.state = DeliveryState.SENT
            delivery.last_status = status
            delivery.error = None
            delivery.attempts += 1
            delivery.sent_at = utcnow()

    def failed(
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
                delivery.state = DeliveryState.DEAD
            else:
                delivery.next_attempt_at = retry_at

    def settle(self, job_id: int) -> SettledJob:
        """After a send round: ``done`` when all delivered, ``dead`` when any gave up."""
        now = utcnow()
        with self.session(lock=True) as session:
            job = session.get(Job, job_id)
            assert job is not None
            states = {d.state for d in job.deliveries}
            if job.state == JobState.SENDING and states <= {DeliveryState.SENT}:
                job.state = check_transition(job.state, JobState.DONE)
                job.finished_at = now
                job.updated_at = now
            elif (
                job.state == JobState.SENDING
                and DeliveryState.DEAD in states
                and DeliveryState.PENDING not in states
            ):
                errors = sorted(
                    {d.error for d in job.deliveries if d.state == DeliveryState.DEAD and d.error}
                )
                job.state = check_transition(job.state, JobState.DEAD)
                job.error = "delivery failed: " + "; ".join(errors)
                job.finished_at = now
                job.updated_at = now
            return SettledJob(job.id, job.state, job.pipeline, job.received_at, job.finished_at)

"""Study completeness: a study is complete once no instance has arrived for a quiet period.

Each gathering job has one APScheduler date-trigger keyed by job id; every new instance
replaces it, pushing completion back.  When it fires, routing decides between ``queued``
(with a pipeline and the instances it takes, stored on the job: the study is routed once) and
``ignored`` (with the reason).  On start, timers are re-armed from the job log so a restart
loses no study.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.config import Settings
from dicom_node.joblog import AssemblyLog
from dicom_node.joblog.records import RecordOutcome
from dicom_node.joblog.schema import JobState, utcnow
from dicom_node.routing import route

log = logging.getLogger(__name__)

# Clock tolerance when checking that the quiet period really elapsed.
_SLACK = dt.timedelta(milliseconds=50)


class StudyAssembler:
    def __init__(
        self, settings: Settings, joblog: AssemblyLog, on_queued: Callable[[], None]
    ) -> None:
        self._settings = settings
        self._joblog = joblog
        self._on_queued = on_queued
        self._scheduler = BackgroundScheduler(timezone=dt.UTC)

    def start(self) -> None:
        self._scheduler.start()
        now = utcnow()
        for job in self._joblog.gathering_jobs():
            quiet = self._settings.quiet_seconds(job.modality)
            remaining = quiet - (now - job.last_instance_at).total_seconds()
            self.arm(job.job_id, max(remaining, 0.0))
        log.info("study assembler started")

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def instance_received(self, outcome: RecordOutcome) -> None:
        self.arm(outcome.job_id, self._settings.quiet_seconds(outcome.modality))

    def arm(self, job_id: int, delay_seconds: float) -> None:
        run_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay_seconds)
        self._scheduler.add_job(
            self._complete,
            "date",
            run_date=run_at,
            args=[job_id],
            id=f"job-{job_id}",
            replace_existing=True,
            misfire_grace_time=None,  # run late rather than never
        )

    def _complete(self, job_id: int) -> None:
        try:
            job = self._joblog.gathering_job(job_id)
            if job is None:
                return
            quiet = self._settings.quiet_seconds(job.modality)
            instances = self._joblog.study_instances(job_id)
            decision = route(instances)
            sources = [instances[i].id for i in decision.instance_indexes]
            quiet_before = utcnow() - dt.timedelta(seconds=quiet) + _SLACK
            changed = self._joblog.complete_job(
                job_id, decision.pipeline, sources, decision.reason, quiet_before
            )
            if not changed:
                still = self._joblog.gathering_job(job_id)
                if still is not None and still.state == JobState.RECEIVED:
                    remaining = quiet - (utcnow() - still.last_instance_at).total_seconds()
                    self.arm(job_id, max(remaining, 0.0))
                return
            if decision.pipeline is None:
                log.info("job %d ignored: %s", job_id, decision.reason)
            else:
                log.info(
                    "job %d queued for the %s pipeline (%s)",
                    job_id,
                    decision.pipeline,
                    decision.reason,
                )
                self._on_queued()
        except Exception:
            log.exception("completing job %d failed; re-arming", job_id)
            self.arm(job_id, 5.0)

"""Study completeness: when the sender is done, or once no instance arrived for a while.

Each gathering job has one APScheduler date-trigger keyed by job id; every new instance
replaces it with the quiet period, pushing completion back.  When a sender *releases* its
association, the studies it sent are likely complete: their timers are replaced by the short
``release_grace_seconds`` (unless another open association is still sending the same study).
An aborted association (or a dropped connection) starts nothing early: its studies keep their
quiet timers.  While any open association has sent instances of a study, the study is not
complete, however long it stalls between instances: a timer that fires then is re-armed.

When a timer fires, routing decides between ``queued`` (with a pipeline and the instances it
takes, stored on the job: the study is routed once) and ``ignored`` (with the reason).  On
start, every gathering job gets its *full* quiet period again: after a crash the senders may
still be resending, and a study must not be analysed with the instances received before it.

With a shared job log the assembler also looks for gathering jobs that other intake nodes
filed (every ``ADOPT_SECONDS``) and arms their timers from their last instance; the row lock
in ``complete_job`` lets one assembler complete each study.  Release and open-association
knowledge stays in the process that received the instances, so a study filed elsewhere
completes after its quiet period.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.joblog import AssemblyLog
from dicom_node.joblog.records import RecordOutcome
from dicom_node.joblog.schema import JobState, utcnow
from dicom_node.routing import route

log = logging.getLogger(__name__)

# Clock tolerance when checking that the quiet period really elapsed.
_SLACK = dt.timedelta(milliseconds=50)
# How often an assembler with a shared job log looks for studies other nodes are filing.
ADOPT_SECONDS = 2.0


class AssemblySettings(Protocol):
    """What the assembler reads of the configuration (``config.Settings`` has it)."""

    def quiet_seconds(self, modality: str | None) -> float: ...
    @property
    def release_grace_seconds(self) -> float | None: ...
    @property
    def shared_joblog(self) -> bool: ...


class StudyAssembler:
    def __init__(
        self, settings: AssemblySettings, joblog: AssemblyLog, on_queued: Callable[[], None]
    ) -> None:
        self._settings = settings
        self._joblog = joblog
        self._on_queued = on_queued
        self._scheduler = BackgroundScheduler(timezone=dt.UTC)
        self._lock = threading.Lock()
        self._senders: dict[int, set[int]] = {}  # job id -> open associations that sent to it
        self._sent: dict[int, set[int]] = {}  # association -> job ids it sent instances of

    def start(self) -> None:
        self._scheduler.start()
        jobs = self._joblog.gathering_jobs()
        for job in jobs:
            self.arm(job.job_id, self._settings.quiet_seconds(job.modality))
        if self._settings.shared_joblog:
            self._scheduler.add_job(
                self._adopt, "interval", seconds=ADOPT_SECONDS, id="adopt", max_instances=1
            )
        log.info("study assembler started (%d gathering studies re-armed)", len(jobs))

    def _adopt(self) -> None:
        """Arm a timer for every gathering job that has none (filed by another node)."""
        try:
            for job in self._joblog.gathering_jobs():
                if self._scheduler.get_job(f"job-{job.job_id}") is not None:
                    continue
                quiet = self._settings.quiet_seconds(job.modality)
                remaining = quiet - (utcnow() - job.last_instance_at).total_seconds()
                self.arm(job.job_id, max(remaining, 0.0))
        except Exception:
            log.exception("looking for gathering studies failed")

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def instance_received(self, outcome: RecordOutcome, association: int | None = None) -> None:
        """An instance of a gathering job was filed, sent in ``association`` (a key unique
        while the association is open; None: not sent over DICOM)."""
        if association is not None:
            with self._lock:
                self._senders.setdefault(outcome.job_id, set()).add(association)
                self._sent.setdefault(association, set()).add(outcome.job_id)
        self.arm(outcome.job_id, self._settings.quiet_seconds(outcome.modality))

    def association_ended(self, association: int, released: bool) -> None:
        """The association closed: released by the sender (its studies start after the
        grace), or aborted or dropped (their quiet timers stand)."""
        with self._lock:
            done = []
            for job_id in self._sent.pop(association, set()):
                senders = self._senders.get(job_id, set())
                senders.discard(association)
                if not senders:
                    self._senders.pop(job_id, None)
                    done.append(job_id)
        grace = self._settings.release_grace_seconds
        if not released or grace is None:
            return
        for job_id in done:
            self.arm(job_id, grace, early=True)

    def being_sent(self, job_id: int) -> bool:
        with self._lock:
            return bool(self._senders.get(job_id))

    def arm(self, job_id: int, delay_seconds: float, early: bool = False) -> None:
        """(Re)place the job's timer; ``early``: completion after a release, which needs
        only the grace since the last instance, not the quiet period."""
        run_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay_seconds)
        self._scheduler.add_job(
            self._complete,
            "date",
            run_date=run_at,
            args=[job_id, early],
            id=f"job-{job_id}",
            replace_existing=True,
            misfire_grace_time=None,  # run late rather than never
        )

    def _complete(self, job_id: int, early: bool = False) -> None:
        try:
            job = self._joblog.gathering_job(job_id)
            if job is None:
                return
            quiet = self._settings.quiet_seconds(job.modality)
            if self.being_sent(job_id):
                # A stalled sender: its association is open, so the study is not complete.
                self.arm(job_id, quiet)
                return
            wait = quiet
            if early and self._settings.release_grace_seconds is not None:
                wait = min(quiet, self._settings.release_grace_seconds)
            instances = self._joblog.study_instances(job_id)
            decision = route(instances)
            sources = [instances[i].id for i in decision.instance_indexes]
            quiet_before = utcnow() - dt.timedelta(seconds=wait) + _SLACK
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
                    "job %d queued for the %s pipeline (%s; %s)",
                    job_id,
                    decision.pipeline,
                    decision.reason,
                    "sender released its association" if early else f"quiet for {quiet:g} s",
                )
                self._on_queued()
        except Exception:
            log.exception("completing job %d failed; re-arming", job_id)
            self.arm(job_id, 5.0)

"""Study completeness: when the sender is done, or once no instance arrived for a while.

Each gathering job has one APScheduler date-trigger keyed by job id; every new instance
replaces it with the quiet period, pushing completion back.  When a sender *releases* its
association, the studies it sent are likely complete: their timers are replaced by the short
``release_grace_seconds`` (unless another open association is still sending the same study).
While any open association has sent instances of a study, the study is not complete, however
long it stalls between instances: a timer that fires then is re-armed.

How the last association that sent instances of a study ended is in the job log
(``jobs.association_end``): ``open`` from its first instance, then ``released`` (A-RELEASE, a
STOW-RS request read to its end) or ``interrupted`` (A-ABORT from either side, a dropped
connection, a network timeout).  An association the node never saw end (the node was killed or
restarted) stays ``open``.  A study whose end is ``interrupted`` or ``open`` (with no local
association sending it) is not completed by the quiet period: the sender did not finish and
will likely resend, so it waits ``interrupted_study_hold_seconds`` after its last instance.  A
resend's instances push that back, and its release lets the study complete after the grace as
usual.  If the hold runs out first, the study is analysed anyway and the worker marks its
outputs unfinished.

When a timer fires, routing decides between ``queued`` (with a pipeline and the instances it
takes, stored on the job: the study is routed once) and ``ignored`` (with the reason).  On
start, every gathering job gets its *full* quiet period (or hold) again: after a crash the
senders may still be resending, and a study must not be analysed with the instances received
before it.

With a shared job log the assembler also looks for gathering jobs that other intake nodes
filed (every ``ADOPT_SECONDS``) and arms their timers from their last instance; the row lock
in ``complete_job`` lets one assembler complete each study.  Open-association knowledge stays
in the process that received the instances; the recorded ends are shared, so a study another
node's sender left unreleased is held here too.  Studies filed by an intake node without the
assembly role record no end and complete after their quiet period.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.joblog import AssemblyLog
from dicom_node.joblog.records import GatheringJob, RecordOutcome
from dicom_node.joblog.schema import UNRELEASED_ENDS, AssociationEnd, JobState, utcnow
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
    def interrupted_study_hold_seconds(self) -> float: ...
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
            self.arm(job.job_id, self._wait(job))
        if self._settings.shared_joblog:
            self._scheduler.add_job(
                self._adopt, "interval", seconds=ADOPT_SECONDS, id="adopt", max_instances=1
            )
        held = sum(1 for job in jobs if _unreleased(job))
        log.info(
            "study assembler started (%d gathering studies re-armed, %d of them held for a "
            "resend: their sender's association ended without release)",
            len(jobs),
            held,
        )

    def _adopt(self) -> None:
        """Arm a timer for every gathering job that has none (filed by another node)."""
        try:
            for job in self._joblog.gathering_jobs():
                if self._scheduler.get_job(f"job-{job.job_id}") is not None:
                    continue
                self.arm(job.job_id, max(self._wait(job) - _since(job.last_instance_at), 0.0))
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
                senders = self._senders.setdefault(outcome.job_id, set())
                first = association not in senders
                senders.add(association)
                self._sent.setdefault(association, set()).add(outcome.job_id)
            if first:
                # Recorded before the instance is acknowledged: if the node dies now, the
                # association's end stays unrecorded, and a restart holds the study.
                self._record_end([outcome.job_id], AssociationEnd.OPEN)
        self.arm(outcome.job_id, self._settings.quiet_seconds(outcome.modality))

    def association_ended(self, association: int, released: bool) -> None:
        """The association closed: released by the sender (its studies start after the
        grace), or aborted or dropped (their studies are held for a resend)."""
        with self._lock:
            done = []
            for job_id in self._sent.pop(association, set()):
                senders = self._senders.get(job_id, set())
                senders.discard(association)
                if not senders:
                    self._senders.pop(job_id, None)
                    done.append(job_id)
        if not done:
            return
        self._record_end(done, AssociationEnd.RELEASED if released else AssociationEnd.INTERRUPTED)
        with self._lock:
            # Another association may have started on one of them since: it is the last one now.
            reopened = [job_id for job_id in done if self._senders.get(job_id)]
        if reopened:
            self._record_end(reopened, AssociationEnd.OPEN)
        if not released:
            log.info(
                "an association ended without release: %d study(ies) held up to %g s after "
                "their last instance for the sender's resend",
                len(done),
                self._settings.interrupted_study_hold_seconds,
            )
            return
        grace = self._settings.release_grace_seconds
        if grace is None:
            return
        for job_id in done:
            self.arm(job_id, grace, early=True)

    def _record_end(self, job_ids: list[int], end: AssociationEnd) -> None:
        """Write how the jobs' association ended; a failure leaves the previous record (at
        worst ``open``: a hold instead of the grace), and never reaches the sender."""
        try:
            self._joblog.record_association_end(job_ids, end)
        except Exception:
            log.exception("recording an association end (%s) for jobs %s failed", end, job_ids)

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

    def _quiet_wait(self, modality: str | None, early: bool = False) -> float:
        """The wait of a study whose sender finished: the grace after a release, else the
        quiet period."""
        quiet = self._settings.quiet_seconds(modality)
        grace = self._settings.release_grace_seconds
        return min(quiet, grace) if early and grace is not None else quiet

    def _hold(self, modality: str | None) -> float:
        """The wait of a study whose sender did not finish (never shorter than the quiet)."""
        return max(self._settings.interrupted_study_hold_seconds, self._quiet_wait(modality))

    def _wait(self, job: GatheringJob, early: bool = False) -> float:
        """How long after its last instance ``job`` may complete, as its row stands."""
        return (
            self._hold(job.modality) if _unreleased(job) else self._quiet_wait(job.modality, early)
        )

    def _complete(self, job_id: int, early: bool = False) -> None:
        try:
            job = self._joblog.gathering_job(job_id)
            if job is None or job.state != JobState.RECEIVED:
                return
            quiet = self._settings.quiet_seconds(job.modality)
            if self.being_sent(job_id):
                # A stalled sender: its association is open, so the study is not complete.
                self.arm(job_id, quiet)
                return
            remaining = self._wait(job, early) - _since(job.last_instance_at)
            if remaining > _SLACK.total_seconds():
                # Not due: a hold outlasts the quiet timer that fired, or an instance came late.
                self.arm(job_id, remaining)
                return
            instances = self._joblog.study_instances(job_id)
            decision = route(instances)
            sources = [instances[i].id for i in decision.instance_indexes]
            now = utcnow() + _SLACK
            quiet_before = now - dt.timedelta(seconds=self._quiet_wait(job.modality, early))
            held_before = now - dt.timedelta(seconds=self._hold(job.modality))
            changed = self._joblog.complete_job(
                job_id, decision.pipeline, sources, decision.reason, quiet_before, held_before
            )
            if not changed:
                still = self._joblog.gathering_job(job_id)
                if still is not None and still.state == JobState.RECEIVED:
                    self.arm(job_id, max(self._wait(still) - _since(still.last_instance_at), 0.0))
                return
            self._log_completed(job, decision.pipeline, decision.reason, early)
        except Exception:
            log.exception("completing job %d failed; re-arming", job_id)
            self.arm(job_id, 5.0)

    def _log_completed(
        self, job: GatheringJob, pipeline: str | None, reason: str | None, early: bool
    ) -> None:
        if pipeline is None:
            log.info("job %d ignored: %s", job.job_id, reason)
            return
        if _unreleased(job):
            log.warning(
                "job %d queued UNFINISHED for the %s pipeline (%s): its sender's association "
                "ended without release and nothing was resent for %g s; its outputs say so",
                job.job_id,
                pipeline,
                reason,
                self._hold(job.modality),
            )
        else:
            log.info(
                "job %d queued for the %s pipeline (%s; %s)",
                job.job_id,
                pipeline,
                reason,
                "sender released its association"
                if early
                else f"quiet for {self._settings.quiet_seconds(job.modality):g} s",
            )
        self._on_queued()


def _unreleased(job: GatheringJob) -> bool:
    """Whether the job's last association ended without release (or was never seen to end)."""
    return job.association_end in UNRELEASED_ENDS


def _since(moment: dt.datetime) -> float:
    return (utcnow() - moment).total_seconds()

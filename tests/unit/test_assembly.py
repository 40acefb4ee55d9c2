"""Quiet-period timers (real APScheduler) deciding when a study is complete."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from dicom_node.assembly import StudyAssembler
from dicom_node.config import Settings
from dicom_node.joblog import JobLog
from dicom_node.joblog.schema import AssociationEnd, JobState
from tests.support.factories import instance_record as record


def _assembler(
    tmp_path: Path, quiet: float, grace: float | None = 1.5, hold: float = 600.0
) -> tuple[StudyAssembler, JobLog, threading.Event]:
    settings = Settings(
        data_dir=tmp_path,
        study_quiet_seconds=quiet,
        release_grace_seconds=grace,
        interrupted_study_hold_seconds=hold,
    )
    joblog = JobLog.open(settings.database_path)
    queued = threading.Event()
    assembler = StudyAssembler(settings, joblog.assembly, queued.set)
    return assembler, joblog, queued


def test_study_is_queued_after_the_quiet_period_and_late_instances_push_it_back(
    tmp_path: Path,
) -> None:
    assembler, joblog, queued = _assembler(tmp_path, quiet=0.6)
    assembler.start()
    try:
        first = joblog.intake.record_instance(record("2.1", "2.1.1"))
        assembler.instance_received(first)
        time.sleep(0.4)
        second = joblog.intake.record_instance(record("2.1", "2.1.2"))
        assembler.instance_received(second)
        time.sleep(0.4)  # 0.8 s after the first instance, 0.4 s after the second
        assert joblog.admin.job(first.job_id).state == JobState.RECEIVED  # type: ignore[union-attr]
        assert queued.wait(3)
        job = joblog.admin.job(first.job_id)
        assert job is not None and job.state == JobState.QUEUED and job.instances == 2
        assert job.pipeline == "xray" and job.source_count == 2  # routed once, both CRs
    finally:
        assembler.stop()


def test_non_chest_study_is_ignored(tmp_path: Path) -> None:
    assembler, joblog, queued = _assembler(tmp_path, quiet=0.1)
    assembler.start()
    try:
        outcome = joblog.intake.record_instance(record("2.2", "2.2.1", modality="MR"))
        assembler.instance_received(outcome)
        deadline = time.monotonic() + 3
        while (
            joblog.admin.job(outcome.job_id).state == JobState.RECEIVED
            and time.monotonic() < deadline
        ):  # type: ignore[union-attr]
            time.sleep(0.05)
        job = joblog.admin.job(outcome.job_id)
        assert job is not None and job.state == JobState.IGNORED and "MR" in (job.error or "")
        assert not queued.is_set()
    finally:
        assembler.stop()


def test_timers_are_rearmed_from_the_log_after_a_restart(tmp_path: Path) -> None:
    assembler, joblog, queued = _assembler(tmp_path, quiet=0.2)
    outcome = joblog.intake.record_instance(record("2.3", "2.3.1"))  # received, no timer armed
    assembler.start()  # a fresh process finds the gathering job in the log
    try:
        assert queued.wait(3)
        assert joblog.admin.job(outcome.job_id).state == JobState.QUEUED  # type: ignore[union-attr]
    finally:
        assembler.stop()


def _state(joblog: JobLog, job_id: int) -> JobState:
    job = joblog.admin.job(job_id)
    assert job is not None
    return job.state


def test_a_restart_waits_the_full_quiet_period_again(tmp_path: Path) -> None:
    """The last instance came long before the crash: the senders may still resend, so the
    study is not analysed at once with what had arrived."""
    assembler, joblog, queued = _assembler(tmp_path, quiet=1.5)
    outcome = joblog.intake.record_instance(record("2.4", "2.4.1"))
    time.sleep(1.6)  # more than the quiet period since the last instance
    started = time.monotonic()
    assembler.start()
    try:
        assert queued.wait(5)
        assert time.monotonic() - started >= 1.4
        assert _state(joblog, outcome.job_id) == JobState.QUEUED
    finally:
        assembler.stop()


def test_a_released_association_starts_its_study_after_the_grace(tmp_path: Path) -> None:
    assembler, joblog, queued = _assembler(tmp_path, quiet=30.0, grace=0.2)
    assembler.start()
    try:
        for sop in ("3.1.1", "3.1.2"):
            outcome = joblog.intake.record_instance(record("3.1", sop))
            assembler.instance_received(outcome, association=7)
        assembler.association_ended(7, released=True)
        assert queued.wait(3)  # not 30 s
        assert _state(joblog, outcome.job_id) == JobState.QUEUED
    finally:
        assembler.stop()


def test_an_aborted_association_starts_nothing_early(tmp_path: Path) -> None:
    """Not the grace, and not the quiet period either: the study is held for the resend."""
    assembler, joblog, queued = _assembler(tmp_path, quiet=0.3, grace=0.1, hold=30.0)
    assembler.start()
    try:
        outcome = joblog.intake.record_instance(record("3.2", "3.2.1"))
        assembler.instance_received(outcome, association=7)
        assembler.association_ended(7, released=False)
        assert not queued.wait(1.5)  # five quiet periods
        assert _state(joblog, outcome.job_id) == JobState.RECEIVED
        assert _end(joblog, outcome.job_id) == AssociationEnd.INTERRUPTED
    finally:
        assembler.stop()


def test_a_study_sent_in_two_associations_waits_for_both(tmp_path: Path) -> None:
    assembler, joblog, queued = _assembler(tmp_path, quiet=0.3, grace=0.1)
    assembler.start()
    try:
        first = joblog.intake.record_instance(record("3.3", "3.3.1"))
        assembler.instance_received(first, association=1)
        second = joblog.intake.record_instance(record("3.3", "3.3.2"))
        assembler.instance_received(second, association=2)
        assembler.association_ended(1, released=True)
        # Association 2 stays open and stalls for longer than the quiet period.
        time.sleep(1.0)
        assert _state(joblog, first.job_id) == JobState.RECEIVED
        assert assembler.being_sent(first.job_id)
        assembler.association_ended(2, released=True)
        assert queued.wait(3)
        job = joblog.admin.job(first.job_id)
        assert job is not None and job.state == JobState.QUEUED and job.instances == 2
    finally:
        assembler.stop()


def test_an_instance_from_another_association_after_a_release_restores_the_quiet_timer(
    tmp_path: Path,
) -> None:
    assembler, joblog, queued = _assembler(tmp_path, quiet=1.2, grace=0.3)
    assembler.start()
    try:
        first = joblog.intake.record_instance(record("3.4", "3.4.1"))
        assembler.instance_received(first, association=1)
        assembler.association_ended(1, released=True)
        late = joblog.intake.record_instance(record("3.4", "3.4.2"))
        assembler.instance_received(late)  # e.g. another sender, within the grace
        time.sleep(0.8)
        assert _state(joblog, first.job_id) == JobState.RECEIVED  # the grace did not win
        assert queued.wait(3)
        job = joblog.admin.job(first.job_id)
        assert job is not None and job.instances == 2
    finally:
        assembler.stop()


def test_no_grace_configured_means_the_quiet_period_decides(tmp_path: Path) -> None:
    assembler, joblog, queued = _assembler(tmp_path, quiet=1.0, grace=None)
    assembler.start()
    try:
        outcome = joblog.intake.record_instance(record("3.5", "3.5.1"))
        assembler.instance_received(outcome, association=3)
        assembler.association_ended(3, released=True)
        time.sleep(0.5)
        assert _state(joblog, outcome.job_id) == JobState.RECEIVED
        assert queued.wait(3)
    finally:
        assembler.stop()


# -- studies whose sender did not finish: held for the resend, else analysed as unfinished ------


def _end(joblog: JobLog, job_id: int) -> str | None:
    job = joblog.assembly.gathering_job(job_id)
    assert job is not None
    return job.association_end


def _wait_for_state(joblog: JobLog, job_id: int, timeout: float) -> JobState:
    deadline = time.monotonic() + timeout
    while _state(joblog, job_id) == JobState.RECEIVED and time.monotonic() < deadline:
        time.sleep(0.05)
    return _state(joblog, job_id)


def test_an_interrupted_study_is_analysed_after_the_hold_and_marked_unfinished(
    tmp_path: Path,
) -> None:
    assembler, joblog, queued = _assembler(tmp_path, quiet=0.2, grace=0.1, hold=2.0)
    assembler.start()
    try:
        outcome = joblog.intake.record_instance(record("4.1", "4.1.1"))
        assembler.instance_received(outcome, association=1)
        assert _end(joblog, outcome.job_id) == AssociationEnd.OPEN  # before the response
        aborted = time.monotonic()
        assembler.association_ended(1, released=False)
        assert queued.wait(15)
        assert time.monotonic() - aborted >= 1.9  # the hold, not the 0.2 s quiet period
        claimed = joblog.queue.claim_next("w1", 60.0)
        assert claimed is not None and claimed.id == outcome.job_id
        assert claimed.unfinished and claimed.pipeline == "xray"
    finally:
        assembler.stop()


def test_a_resend_released_after_an_abort_completes_the_study_normally(tmp_path: Path) -> None:
    assembler, joblog, queued = _assembler(tmp_path, quiet=0.2, grace=0.1, hold=60.0)
    assembler.start()
    try:
        first = joblog.intake.record_instance(record("4.2", "4.2.1"))
        assembler.instance_received(first, association=1)
        assembler.association_ended(1, released=False)
        assert not queued.wait(1.0)  # five quiet periods: held
        for sop in ("4.2.1", "4.2.2"):  # the whole study again, then A-RELEASE
            resent = joblog.intake.record_instance(record("4.2", sop))
            assembler.instance_received(resent, association=2)
        assert _end(joblog, first.job_id) == AssociationEnd.OPEN
        assembler.association_ended(2, released=True)
        assert queued.wait(5)  # the grace, not the 60 s hold
        claimed = joblog.queue.claim_next("w1", 60.0)
        assert claimed is not None and claimed.id == first.job_id
        assert not claimed.unfinished and len(claimed.sources) == 2
        assert _end(joblog, first.job_id) == AssociationEnd.RELEASED
    finally:
        assembler.stop()


def test_an_instance_of_a_held_study_restarts_its_hold(tmp_path: Path) -> None:
    assembler, joblog, queued = _assembler(tmp_path, quiet=0.2, grace=0.1, hold=2.0)
    assembler.start()
    try:
        first = joblog.intake.record_instance(record("4.3", "4.3.1"))
        assembler.instance_received(first, association=1)
        assembler.association_ended(1, released=False)
        time.sleep(1.2)
        again = joblog.intake.record_instance(record("4.3", "4.3.2"))  # a resend, cut short too
        assembler.instance_received(again, association=2)
        resent = time.monotonic()
        assembler.association_ended(2, released=False)
        assert queued.wait(15)
        assert time.monotonic() - resent >= 1.9  # a full hold from the last instance
        claimed = joblog.queue.claim_next("w1", 60.0)
        assert claimed is not None and claimed.unfinished and len(claimed.sources) == 2
    finally:
        assembler.stop()


def test_an_association_open_when_the_node_died_holds_its_study_after_the_restart(
    tmp_path: Path,
) -> None:
    before, joblog, _ = _assembler(tmp_path, quiet=0.2, hold=2.5)
    before.start()
    outcome = joblog.intake.record_instance(record("4.4", "4.4.1"))
    before.instance_received(outcome, association=1)
    before.stop()  # killed mid-association: its end is never recorded
    joblog.close()
    after, joblog, queued = _assembler(tmp_path, quiet=0.2, hold=2.5)
    restarted = time.monotonic()
    after.start()
    try:
        assert _end(joblog, outcome.job_id) == AssociationEnd.OPEN
        assert queued.wait(15)
        assert time.monotonic() - restarted >= 2.4  # a full hold from the restart
        claimed = joblog.queue.claim_next("w1", 60.0)
        assert claimed is not None and claimed.unfinished
    finally:
        after.stop()


def test_a_study_released_before_the_node_died_gets_the_quiet_period_after_the_restart(
    tmp_path: Path,
) -> None:
    before, joblog, _ = _assembler(tmp_path, quiet=0.5, grace=None, hold=60.0)
    before.start()
    outcome = joblog.intake.record_instance(record("4.5", "4.5.1"))
    before.instance_received(outcome, association=1)
    before.association_ended(1, released=True)  # no grace: the quiet timer is still running
    before.stop()
    joblog.close()
    after, joblog, queued = _assembler(tmp_path, quiet=0.5, grace=None, hold=60.0)
    after.start()
    try:
        assert queued.wait(10)  # not the 60 s hold
        claimed = joblog.queue.claim_next("w1", 60.0)
        assert claimed is not None and not claimed.unfinished
    finally:
        after.stop()


def test_a_release_while_another_association_still_sends_keeps_the_study_open(
    tmp_path: Path,
) -> None:
    """Association 1 released, 2 was still sending when the node died: held after a restart."""
    before, joblog, _ = _assembler(tmp_path, quiet=0.2, grace=0.1, hold=60.0)
    before.start()
    first = joblog.intake.record_instance(record("4.6", "4.6.1"))
    before.instance_received(first, association=1)
    second = joblog.intake.record_instance(record("4.6", "4.6.2"))
    before.instance_received(second, association=2)
    before.association_ended(1, released=True)
    assert _end(joblog, first.job_id) == AssociationEnd.OPEN
    before.stop()
    joblog.close()
    after, joblog, queued = _assembler(tmp_path, quiet=0.2, grace=0.1, hold=60.0)
    after.start()
    try:
        assert not queued.wait(1.5)
        assert _state(joblog, first.job_id) == JobState.RECEIVED
    finally:
        after.stop()


def test_a_completed_job_keeps_the_association_end_it_was_completed_with(tmp_path: Path) -> None:
    assembler, joblog, _ = _assembler(tmp_path, quiet=0.2, grace=0.1, hold=60.0)
    assembler.start()
    try:
        outcome = joblog.intake.record_instance(record("4.7", "4.7.1"))
        assembler.instance_received(outcome, association=1)
        assembler.association_ended(1, released=True)
        assert _wait_for_state(joblog, outcome.job_id, 5) == JobState.QUEUED
        # A stale end arriving afterwards (another node's late report) changes nothing.
        joblog.assembly.record_association_end([outcome.job_id], AssociationEnd.INTERRUPTED)
        assert _end(joblog, outcome.job_id) == AssociationEnd.RELEASED
        claimed = joblog.queue.claim_next("w1", 60.0)
        assert claimed is not None and not claimed.unfinished
    finally:
        assembler.stop()

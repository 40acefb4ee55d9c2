"""Job log roles and state machine on a real SQLite file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from dicom_node.joblog import JobLog
from dicom_node.joblog.records import ResultFile
from dicom_node.joblog.schema import (
    TRANSITIONS,
    InvalidTransition,
    JobState,
    check_transition,
    utcnow,
)
from tests.support.factories import instance_record as record


@pytest.fixture
def joblog(tmp_path: Path) -> JobLog:
    return JobLog.open(tmp_path / "jobs.sqlite")


def later() -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=1)


def complete(joblog: JobLog, job_id: int, pipeline: str | None = "xray") -> bool:
    """Complete a job the way the assembler does: route it to every instance of the study."""
    sources = [i.id for i in joblog.assembly.study_instances(job_id)] if pipeline else []
    reason = None if pipeline else "no pipeline for modality MR"
    return joblog.assembly.complete_job(job_id, pipeline, sources, reason, later())


def state(joblog: JobLog, job_id: int) -> str:
    job = joblog.admin.job(job_id)
    assert job is not None
    return job.state


def test_wal_mode(joblog: JobLog) -> None:
    with joblog.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_instances_of_a_study_gather_in_one_received_job(joblog: JobLog) -> None:
    first = joblog.intake.record_instance(record("1.1", "1.1.1"))
    second = joblog.intake.record_instance(record("1.1", "1.1.2"))
    assert first.job_id == second.job_id and second.gathering
    job = joblog.admin.job(first.job_id)
    assert job is not None and job.state == JobState.RECEIVED and job.instances == 2
    assert [g.job_id for g in joblog.assembly.gathering_jobs()] == [first.job_id]


def test_completion_waits_for_the_quiet_period(joblog: JobLog) -> None:
    outcome = joblog.intake.record_instance(record("1.2", "1.2.1"))
    too_early = utcnow() - dt.timedelta(seconds=5)
    assert not joblog.assembly.complete_job(outcome.job_id, "xray", [], None, too_early)
    assert complete(joblog, outcome.job_id)
    assert state(joblog, outcome.job_id) == JobState.QUEUED


def test_unrouted_study_is_ignored_with_its_reason(joblog: JobLog) -> None:
    outcome = joblog.intake.record_instance(record("1.3", "1.3.1", modality="MR"))
    assert complete(joblog, outcome.job_id, pipeline=None)
    [row] = joblog.admin.job_rows()
    assert row.state == JobState.IGNORED and row.error == "no pipeline for modality MR"


def test_the_worker_gets_the_instances_routing_chose(joblog: JobLog) -> None:
    joblog.intake.record_instance(record("1.9", "1.9.1"))
    outcome = joblog.intake.record_instance(record("1.9", "1.9.2"))
    chosen = joblog.assembly.study_instances(outcome.job_id)[1]
    assert joblog.assembly.complete_job(outcome.job_id, "xray", [chosen.id], None, later())
    claimed = joblog.queue.claim_next("w1", 60.0)
    assert claimed is not None and claimed.pipeline == "xray"
    assert [s.sop_instance_uid for s in claimed.sources] == ["1.9.2"]
    assert claimed.sources[0].path == "/inbox/1.9.2.dcm"


def test_claim_is_exclusive_and_recover_requeues_running_jobs(joblog: JobLog) -> None:
    outcome = joblog.intake.record_instance(record("1.4", "1.4.1"))
    complete(joblog, outcome.job_id)
    claimed = joblog.queue.claim_next("w1", 60.0)
    assert claimed is not None and claimed.attempts == 1
    assert state(joblog, claimed.id) == JobState.RUNNING
    assert joblog.queue.claim_next("w1", 60.0) is None
    [back] = joblog.queue.reclaim_expired(3, everyone=True)  # e.g. after kill -9
    assert (back.job_id, back.state) == (outcome.job_id, JobState.QUEUED)
    again = joblog.queue.claim_next("w1", 60.0)
    assert again is not None and again.attempts == 2 and len(again.sources) == 1


def test_late_instance_after_analysis_opens_version_two(joblog: JobLog) -> None:
    first = joblog.intake.record_instance(record("1.5", "1.5.1"))
    complete(joblog, first.job_id)
    claimed = joblog.queue.claim_next("w1", 60.0)
    assert claimed is not None
    joblog.queue.processed(claimed.id, "m", "1", "{}", [], destination=None)
    assert state(joblog, first.job_id) == JobState.DONE
    late = joblog.intake.record_instance(record("1.5", "1.5.2"))
    assert late.job_id != first.job_id and late.gathering
    job = joblog.admin.job(late.job_id)
    assert job is not None and job.version == 2 and job.instances == 2
    # A resent copy of a known instance does not start yet another analysis.
    again = joblog.intake.record_instance(record("1.5", "1.5.1"))
    assert again.duplicate and again.job_id == late.job_id


def test_deliveries_settle_the_job(joblog: JobLog) -> None:
    outcome = joblog.intake.record_instance(record("1.8", "1.8.1"))
    complete(joblog, outcome.job_id)
    claimed = joblog.queue.claim_next("w1", 60.0)
    assert claimed is not None
    files = [ResultFile("9.1", "1.2.840.10008.5.1.4.1.1.88.34", "/outbox/9.1.dcm")]
    joblog.queue.processed(claimed.id, "m", "1", "{}", files, "PACS@127.0.0.1:104")
    assert state(joblog, claimed.id) == JobState.SENDING
    [due] = joblog.deliveries.due()
    assert due.sop_instance_uid == "9.1" and due.attempts == 0
    joblog.deliveries.sent(due.id, 0x0000)
    settled = joblog.deliveries.settle(claimed.id)
    assert settled.state == JobState.DONE and settled.finished_at is not None
    assert joblog.deliveries.due() == []


def test_requeue_only_touches_failed_and_dead(joblog: JobLog) -> None:
    a = joblog.intake.record_instance(record("1.6", "1.6.1"))
    b = joblog.intake.record_instance(record("1.7", "1.7.1"))
    for outcome in (a, b):
        complete(joblog, outcome.job_id)
    claimed = joblog.queue.claim_next("w1", 60.0)
    assert claimed is not None
    joblog.queue.fail(claimed.id, "boom")
    assert state(joblog, claimed.id) == JobState.FAILED
    assert joblog.admin.requeue() == [claimed.id]
    assert joblog.admin.requeue() == []
    counts = joblog.admin.state_counts()
    assert counts[JobState.QUEUED] == 2 and counts[JobState.FAILED] == 0


def test_rejections_are_listed_with_status_and_reason(joblog: JobLog) -> None:
    joblog.intake.record_rejection("MODALITY", 0xA900, "StudyInstanceUID is missing")
    [row] = joblog.admin.job_rows()
    assert row.state == "rejected"
    assert row.error == "StudyInstanceUID is missing (status 0xA900, from MODALITY)"
    assert row.as_json()["study_instance_uid"] is None


def test_every_state_is_in_the_transition_table() -> None:
    assert set(TRANSITIONS) == set(JobState)
    assert check_transition("queued", JobState.RUNNING) == JobState.RUNNING
    with pytest.raises(InvalidTransition, match="done cannot become queued"):
        check_transition("done", JobState.QUEUED)


def test_a_finished_job_cannot_be_finished_again(joblog: JobLog) -> None:
    outcome = joblog.intake.record_instance(record("1.10", "1.10.1"))
    complete(joblog, outcome.job_id)
    claimed = joblog.queue.claim_next("w1", 60.0)
    assert claimed is not None
    assert joblog.queue.ignore(claimed.id, "not analysable", claimed.worker)
    # Only a running job's holder records its end: a second outcome is refused, not applied.
    assert not joblog.queue.fail(claimed.id, "boom", claimed.worker)
    assert state(joblog, claimed.id) == JobState.IGNORED

"""Job log state machine on a real SQLite file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from dicom_node.db import (
    DONE,
    FAILED,
    IGNORED,
    QUEUED,
    RECEIVED,
    RUNNING,
    InstanceRecord,
    JobLog,
    utcnow,
)


def record(study: str, sop: str, modality: str = "CR") -> InstanceRecord:
    return InstanceRecord(
        study_instance_uid=study,
        series_instance_uid=study + ".1",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality=modality,
        body_part="CHEST",
        image_type=None,
        description=None,
        calling_ae="MODALITY",
        path=f"/inbox/{sop}.dcm",
        size_bytes=10,
    )


@pytest.fixture
def joblog(tmp_path: Path) -> JobLog:
    return JobLog.open(tmp_path / "jobs.sqlite")


def later() -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=1)


def test_wal_mode(joblog: JobLog) -> None:
    with joblog.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_instances_of_a_study_gather_in_one_received_job(joblog: JobLog) -> None:
    first = joblog.record_instance(record("1.1", "1.1.1"))
    second = joblog.record_instance(record("1.1", "1.1.2"))
    assert first.job_id == second.job_id and second.gathering
    job = joblog.job(first.job_id)
    assert job is not None and job.state == RECEIVED and job.instance_count == 2


def test_completion_waits_for_the_quiet_period(joblog: JobLog) -> None:
    outcome = joblog.record_instance(record("1.2", "1.2.1"))
    too_early = utcnow() - dt.timedelta(seconds=5)
    assert not joblog.complete_job(outcome.job_id, "xray", None, too_early)
    assert joblog.complete_job(outcome.job_id, "xray", None, later())
    assert joblog.job(outcome.job_id).state == QUEUED  # type: ignore[union-attr]


def test_unrouted_study_is_ignored_with_its_reason(joblog: JobLog) -> None:
    outcome = joblog.record_instance(record("1.3", "1.3.1", modality="MR"))
    assert joblog.complete_job(outcome.job_id, None, "no pipeline for modality MR", later())
    [row] = joblog.job_rows()
    assert row.state == IGNORED and row.error == "no pipeline for modality MR"


def test_claim_is_exclusive_and_recover_requeues_running_jobs(joblog: JobLog) -> None:
    outcome = joblog.record_instance(record("1.4", "1.4.1"))
    joblog.complete_job(outcome.job_id, "xray", None, later())
    claimed = joblog.claim_next_job()
    assert claimed is not None and claimed.state == RUNNING
    assert joblog.claim_next_job() is None
    assert joblog.recover() == [outcome.job_id]  # e.g. after kill -9
    assert joblog.claim_next_job() is not None


def test_late_instance_after_analysis_opens_version_two(joblog: JobLog) -> None:
    first = joblog.record_instance(record("1.5", "1.5.1"))
    joblog.complete_job(first.job_id, "xray", None, later())
    claimed = joblog.claim_next_job()
    assert claimed is not None
    joblog.processed(claimed.id, "m", "1", "{}", [], destination=None)
    assert joblog.job(first.job_id).state == DONE  # type: ignore[union-attr]
    late = joblog.record_instance(record("1.5", "1.5.2"))
    assert late.job_id != first.job_id and late.gathering
    job = joblog.job(late.job_id)
    assert job is not None and job.version == 2 and job.instance_count == 2
    # A resent copy of a known instance does not start yet another analysis.
    again = joblog.record_instance(record("1.5", "1.5.1"))
    assert again.duplicate and again.job_id == late.job_id


def test_requeue_only_touches_failed_and_dead(joblog: JobLog) -> None:
    a = joblog.record_instance(record("1.6", "1.6.1"))
    b = joblog.record_instance(record("1.7", "1.7.1"))
    for outcome in (a, b):
        joblog.complete_job(outcome.job_id, "xray", None, later())
    claimed = joblog.claim_next_job()
    assert claimed is not None
    joblog.fail_job(claimed.id, "boom")
    assert joblog.job(claimed.id).state == FAILED  # type: ignore[union-attr]
    assert joblog.requeue() == [claimed.id]
    assert joblog.requeue() == []
    counts = joblog.state_counts()
    assert counts[QUEUED] == 2 and counts[FAILED] == 0


def test_rejections_are_listed_with_status_and_reason(joblog: JobLog) -> None:
    joblog.record_rejection("MODALITY", 0xA900, "StudyInstanceUID is missing")
    [row] = joblog.job_rows()
    assert row.state == "rejected"
    assert row.error == "StudyInstanceUID is missing (status 0xA900, from MODALITY)"
    assert row.as_json()["study_instance_uid"] is None

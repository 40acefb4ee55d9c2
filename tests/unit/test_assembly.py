"""Quiet-period timers (real APScheduler) deciding when a study is complete."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from dicom_node.assembly import StudyAssembler
from dicom_node.config import Settings
from dicom_node.joblog import JobLog
from dicom_node.joblog.schema import JobState
from tests.support.factories import instance_record as record


def _assembler(tmp_path: Path, quiet: float) -> tuple[StudyAssembler, JobLog, threading.Event]:
    settings = Settings(data_dir=tmp_path, study_quiet_seconds=quiet)
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

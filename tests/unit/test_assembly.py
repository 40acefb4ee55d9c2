"""Quiet-period timers (real APScheduler) deciding when a study is complete."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from dicom_node.assembly import StudyAssembler
from dicom_node.config import Settings
from dicom_node.db import IGNORED, QUEUED, RECEIVED, JobLog
from tests.unit.test_joblog import record


def _assembler(tmp_path: Path, quiet: float) -> tuple[StudyAssembler, JobLog, threading.Event]:
    settings = Settings(data_dir=tmp_path, study_quiet_seconds=quiet)
    joblog = JobLog.open(settings.database_path)
    queued = threading.Event()
    assembler = StudyAssembler(settings, joblog, queued.set)
    return assembler, joblog, queued


def test_study_is_queued_after_the_quiet_period_and_late_instances_push_it_back(
    tmp_path: Path,
) -> None:
    assembler, joblog, queued = _assembler(tmp_path, quiet=0.6)
    assembler.start()
    try:
        first = joblog.record_instance(record("2.1", "2.1.1"))
        assembler.instance_received(first)
        time.sleep(0.4)
        second = joblog.record_instance(record("2.1", "2.1.2"))
        assembler.instance_received(second)
        time.sleep(0.4)  # 0.8 s after the first instance, 0.4 s after the second
        assert joblog.job(first.job_id).state == RECEIVED  # type: ignore[union-attr]
        assert queued.wait(3)
        job = joblog.job(first.job_id)
        assert job is not None and job.state == QUEUED and job.instance_count == 2
    finally:
        assembler.stop()


def test_non_chest_study_is_ignored(tmp_path: Path) -> None:
    assembler, joblog, queued = _assembler(tmp_path, quiet=0.1)
    assembler.start()
    try:
        outcome = joblog.record_instance(record("2.2", "2.2.1", modality="MR"))
        assembler.instance_received(outcome)
        deadline = time.monotonic() + 3
        while joblog.job(outcome.job_id).state == RECEIVED and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.05)
        job = joblog.job(outcome.job_id)
        assert job is not None and job.state == IGNORED and "MR" in (job.error or "")
        assert not queued.is_set()
    finally:
        assembler.stop()


def test_timers_are_rearmed_from_the_log_after_a_restart(tmp_path: Path) -> None:
    assembler, joblog, queued = _assembler(tmp_path, quiet=0.2)
    outcome = joblog.record_instance(record("2.3", "2.3.1"))  # received, no timer armed
    assembler.start()  # a fresh process finds the gathering job in the log
    try:
        assert queued.wait(3)
        assert joblog.job(outcome.job_id).state == QUEUED  # type: ignore[union-attr]
    finally:
        assembler.stop()

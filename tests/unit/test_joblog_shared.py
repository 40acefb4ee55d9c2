"""The job log shared by several processes: schema versions, claims, leases, one completion.

Every test runs on a SQLite file and on a real PostgreSQL (a throwaway cluster, skipped with
the reason where Debian's postgresql is missing).  Separate ``JobLog`` objects stand for
separate node processes: each has its own engine and connections.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import Engine, text

from dicom_node.admin.metrics import Metrics
from dicom_node.cli.main import main as cli_main
from dicom_node.config import Settings
from dicom_node.domain import ModelInfo, OutputContext
from dicom_node.joblog import JobLog, migrate
from dicom_node.joblog.records import Reclaimed, ResultFile
from dicom_node.joblog.schema import Base, JobState, make_engine, utcnow
from dicom_node.pipelines.base import Pipeline
from dicom_node.registry import LoadedPipeline, PipelineRegistry
from dicom_node.worker import Worker
from tests.support.factories import instance_record as record
from tests.support.factories import small_cr
from tests.support.postgres import PostgresServer

OpenLog = Callable[[], JobLog]


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def database_url(empty_url: str) -> str:
    engine = make_engine(empty_url)
    migrate.upgrade(engine)  # as `dicom-node db upgrade` does before nodes start
    engine.dispose()
    return empty_url


def upgrade_to(engine: Engine, revision: str) -> None:
    with engine.begin() as connection:
        command.upgrade(migrate._config(connection), revision)


@pytest.fixture
def open_log(database_url: str) -> Iterator[OpenLog]:
    """Opens the job log as one more node process would."""
    opened: list[JobLog] = []

    def open_one() -> JobLog:
        joblog = JobLog.open(database_url)
        opened.append(joblog)
        return joblog

    yield open_one
    for joblog in opened:
        joblog.close()


def queue_jobs(joblog: JobLog, count: int, prefix: str = "2.25") -> list[int]:
    """``count`` single-instance studies, each completed and queued for the xray pipeline."""
    ids = []
    for n in range(count):
        outcome = joblog.intake.record_instance(record(f"{prefix}.{n}", f"{prefix}.{n}.1"))
        sources = [i.id for i in joblog.assembly.study_instances(outcome.job_id)]
        later = utcnow() + dt.timedelta(seconds=1)
        assert joblog.assembly.complete_job(outcome.job_id, "xray", sources, None, later)
        ids.append(outcome.job_id)
    return ids


def output(uid: str) -> list[ResultFile]:
    return [ResultFile(uid, "1.2.840.10008.5.1.4.1.1.88.34", f"/outbox/{uid}.dcm")]


def test_migrations_build_exactly_the_models_tables(open_log: OpenLog) -> None:
    joblog = open_log()
    assert migrate.current(joblog.engine) == migrate.head()
    with joblog.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_no_two_workers_get_the_same_job(open_log: OpenLog) -> None:
    job_ids = set(queue_jobs(open_log(), 40))
    workers = [open_log() for _ in range(4)]
    claimed: dict[str, list[int]] = {}
    start = threading.Barrier(len(workers))

    def drain(name: str, joblog: JobLog) -> None:
        start.wait()
        mine = claimed.setdefault(name, [])
        while (job := joblog.queue.claim_next(name, 60.0)) is not None:
            mine.append(job.id)

    threads = [threading.Thread(target=drain, args=(f"w{n}", log)) for n, log in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    every_claim = [job_id for ids in claimed.values() for job_id in ids]
    assert sorted(every_claim) == sorted(job_ids)  # each job once, none left
    rows = {row.job_id: row for row in workers[0].admin.job_rows()}
    for name, ids in claimed.items():
        assert all(rows[job_id].worker == name for job_id in ids)


def test_a_lost_worker_loses_its_job_and_cannot_record_results(open_log: OpenLog) -> None:
    gone, alive = open_log(), open_log()
    [job_id] = queue_jobs(gone, 1)
    stalled = gone.queue.claim_next("host-a:1", 0.2)
    assert stalled is not None
    assert alive.queue.reclaim_expired(3) == []  # the lease still holds
    time.sleep(0.3)
    assert alive.queue.reclaim_expired(3) == [Reclaimed(job_id, JobState.QUEUED)]
    taken = alive.queue.claim_next("host-b:2", 60.0)
    assert taken is not None and taken.id == job_id and taken.attempts == 2

    # The stalled worker wakes up: its results are refused, the new worker's count.
    assert not gone.queue.processed(job_id, "m", "1", "{}", output("9.1"), "PACS", stalled.worker)
    assert not gone.queue.fail(job_id, "late", stalled.worker)
    assert alive.queue.processed(job_id, "m", "1", "{}", output("9.2"), "PACS", taken.worker)
    [due] = alive.deliveries.due()
    assert due.sop_instance_uid == "9.2"
    row = alive.admin.job(job_id)
    assert row is not None and row.state == JobState.SENDING and row.worker == "host-b:2"


def test_the_heartbeat_keeps_a_long_job(open_log: OpenLog) -> None:
    worker, other = open_log(), open_log()
    [job_id] = queue_jobs(worker, 1)
    assert worker.queue.claim_next("w1", 0.5) is not None
    for _ in range(5):
        time.sleep(0.2)
        assert worker.queue.heartbeat("w1", 0.5) == 1
        assert other.queue.reclaim_expired(3) == []
    assert other.admin.job(job_id).state == JobState.RUNNING  # type: ignore[union-attr]


def test_a_job_that_keeps_losing_its_worker_fails_with_the_reason(open_log: OpenLog) -> None:
    joblog = open_log()
    [job_id] = queue_jobs(joblog, 1)
    for attempt in range(1, 4):
        claimed = joblog.queue.claim_next(f"w{attempt}", 0.05)
        assert claimed is not None and claimed.attempts == attempt
        time.sleep(0.1)
        then = JobState.QUEUED if attempt < 3 else JobState.FAILED
        assert joblog.queue.reclaim_expired(3) == [Reclaimed(job_id, then)]
    row = joblog.admin.job(job_id)
    assert row is not None and row.state == JobState.FAILED
    assert row.error is not None and "worker was lost 3 time(s)" in row.error
    assert "w3" in row.error
    # An admin's requeue gives it a fresh allowance.
    assert joblog.admin.requeue([job_id]) == [job_id]
    again = joblog.queue.claim_next("w4", 60.0)
    assert again is not None and again.attempts == 1


def test_one_assembler_completes_a_study_that_two_race_for(open_log: OpenLog) -> None:
    logs = [open_log() for _ in range(4)]
    outcome = logs[0].intake.record_instance(record("2.26", "2.26.1"))
    sources = [i.id for i in logs[0].assembly.study_instances(outcome.job_id)]
    later = utcnow() + dt.timedelta(seconds=1)
    start = threading.Barrier(len(logs))
    results: list[bool] = []

    def complete(joblog: JobLog) -> None:
        start.wait()
        results.append(joblog.assembly.complete_job(outcome.job_id, "xray", sources, None, later))

    threads = [threading.Thread(target=complete, args=(log,)) for log in logs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [False, False, False, True]
    assert logs[1].admin.state_counts()[JobState.QUEUED] == 1


def test_a_held_delivery_goes_to_one_sender(open_log: OpenLog) -> None:
    first, second = open_log(), open_log()
    [job_id] = queue_jobs(first, 1)
    claimed = first.queue.claim_next("w1", 60.0)
    assert claimed is not None
    first.queue.processed(job_id, "m", "1", "{}", output("9.3"), "PACS", claimed.worker)
    [held] = first.deliveries.due(hold_seconds=30)
    assert second.deliveries.due(hold_seconds=30) == []
    second.deliveries.failed(held.id, None, "refused", utcnow() - dt.timedelta(seconds=1))
    [again] = second.deliveries.due(hold_seconds=30)  # the outcome replaced the hold
    assert again.id == held.id


def test_intake_nodes_filing_one_study_at_once_make_one_job(open_log: OpenLog) -> None:
    logs = [open_log() for _ in range(4)]
    start = threading.Barrier(len(logs))
    outcomes = []

    def file(n: int, joblog: JobLog) -> None:
        start.wait()
        for k in range(5):
            outcomes.append(joblog.intake.record_instance(record("2.27", f"2.27.{n}.{k}")))

    threads = [threading.Thread(target=file, args=(n, log)) for n, log in enumerate(logs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len({o.job_id for o in outcomes}) == 1
    [row] = logs[0].admin.job_rows()
    assert row.instances == 20 and row.state == JobState.RECEIVED


def test_a_database_behind_or_ahead_is_refused_with_the_way_out(
    empty_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database_url = empty_url
    engine = make_engine(database_url)
    upgrade_to(engine, migrate.BASELINE)  # as an older release left it
    if engine.dialect.name == "postgresql":
        with pytest.raises(migrate.SchemaError, match=r"at schema revision 0001.*db upgrade"):
            JobLog.open(database_url)
        env = {"DICOM_NODE_DATABASE_URL": database_url, "DICOM_NODE_DATA_DIR": str(tmp_path)}
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            assert cli_main(["db", "check"]) == 1
            assert "db upgrade" in capsys.readouterr().err
            assert cli_main(["serve"]) == 2  # refuses before anything listens
            assert "db upgrade" in capsys.readouterr().err
            assert cli_main(["db", "upgrade"]) == 0
            assert "0001 -> 0005" in capsys.readouterr().out
            assert cli_main(["db", "check"]) == 0
    else:
        # A node's own SQLite file is brought up to date when the node opens it.
        JobLog.open(database_url).close()
        assert migrate.current(engine) == migrate.head()
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(migrate.SchemaError, match="does not know"):
        JobLog.open(database_url)
    engine.dispose()


def test_an_empty_shared_database_needs_db_upgrade(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    with pytest.raises(migrate.SchemaError, match=r"no dicom-node schema.*db upgrade"):
        JobLog.open(url)


def test_a_file_from_before_alembic_is_adopted_with_its_jobs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    engine = make_engine(url)
    upgrade_to(engine, migrate.BASELINE)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))  # as create_all left it
        connection.execute(
            text(
                "INSERT INTO studies (id, study_instance_uid, first_received_at, "
                "last_received_at) VALUES (1, '2.28', '2026-01-01', '2026-01-01')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO jobs (id, study_id, version, state, instance_count, attempts, "
                "received_at, last_instance_at, updated_at) "
                "VALUES (1, 1, 1, 'failed', 1, 1, '2026-01-01', '2026-01-01', '2026-01-01')"
            )
        )
    engine.dispose()
    joblog = JobLog.open(tmp_path / "jobs.sqlite")
    try:
        assert migrate.current(joblog.engine) == migrate.head()
        [row] = joblog.admin.job_rows()
        assert row.study_instance_uid == "2.28" and row.state == JobState.FAILED
    finally:
        joblog.close()


class _Stalls(Pipeline[list[str], list[str], list[str]]):
    """Stands for a worker that stalls past its lease: while it runs, the lease runs out and
    another worker takes the job."""

    name = "xray"

    def __init__(self, on_run: Callable[[], None]) -> None:
        self.model_info = ModelInfo("stalling_model", "0.0.1")
        self._on_run = on_run

    def preprocess(self, sources: Sequence[Dataset]) -> list[str]:
        self._on_run()
        return [str(ds.SOPInstanceUID) for ds in sources]

    def predict(self, prepared: list[str]) -> list[str]:
        return prepared

    def postprocess(self, raw: list[str], prepared: list[str]) -> list[str]:
        return raw


def _one_output(
    finding: list[str], sources: Sequence[Dataset], context: OutputContext, model: ModelInfo
) -> list[Dataset]:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return [ds]


def test_a_worker_that_stalled_past_its_lease_discards_its_results(
    open_log: OpenLog, tmp_path: Path
) -> None:
    stalled_log, other = open_log(), open_log()
    source = small_cr()
    source_path = tmp_path / "source.dcm"
    source.save_as(source_path, enforce_file_format=True)
    outcome = stalled_log.intake.record_instance(
        dataclasses.replace(record("2.25.77", "2.25.77.1"), path=str(source_path))
    )
    [instance] = stalled_log.assembly.study_instances(outcome.job_id)
    later = utcnow() + dt.timedelta(seconds=1)
    assert stalled_log.assembly.complete_job(outcome.job_id, "xray", [instance.id], None, later)
    taken: list[int] = []

    def lease_runs_out() -> None:
        time.sleep(0.15)
        other.queue.reclaim_expired(3)
        job = other.queue.claim_next("host-b:2", 60.0)
        assert job is not None
        taken.append(job.id)

    settings = Settings(data_dir=tmp_path / "data", pacs=None, fsync=False)
    registry = PipelineRegistry(
        factories={"xray": lambda: LoadedPipeline("xray", _Stalls(lease_runs_out), _one_output)}
    )
    worker = Worker(settings, stalled_log.queue, registry, Metrics(), lambda: None)
    job = stalled_log.queue.claim_next("host-a:1", 0.1)
    assert job is not None
    worker.process(job)

    assert taken == [job.id]
    row = other.admin.job(job.id)
    assert row is not None and row.state == JobState.RUNNING and row.worker == "host-b:2"
    assert row.summary is None  # the stalled worker's outcome was not recorded
    assert not list(settings.outbox_dir.rglob("*.dcm"))  # nor its files kept

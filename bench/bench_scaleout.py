"""Scale-out: studies per minute with 1, 2 and 3 worker processes on a PostgreSQL job log,
against 1 worker on SQLite, and the latency of one claim.

Throughput: an intake-only node files the studies (they stay ``received``); K worker
processes start and load their models; then an assembly-only node starts and queues every
study at once.  Studies per minute = studies / (last ``finished_at`` - first ``queued_at``),
from the job log (one clock).  No PACS: a job is done when its outputs are in the outbox, so
this is the workers' rate, not the network's.  X-ray: pydicom-data's chest CR (new UIDs per
study); CT: 96-slice 256x256 phantoms.

Claim latency: ``claim_next`` on a queue of 500 jobs, one claimer, then three at once
(threads with a connection each), PostgreSQL against SQLite, same process.

Usage: ``python bench/bench_scaleout.py [--xray 12] [--ct 3] [--workers 1,2,3]``.
On 2 CPU cores the workers share the cores: the gain is bounded by them, not by the queue.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from dicom_node.joblog import JobLog, migrate
from dicom_node.joblog.schema import make_engine, utcnow
from tests.support.factories import instance_record
from tests.support.net import free_port
from tests.support.node import NodeProcess
from tests.support.postgres import PostgresServer, unavailable_reason
from tests.support.synthetic.writer import write_phantom_series


def write_studies(directory: Path, xray: int, ct: int) -> list[Path]:
    """One folder per study, to send one association each."""
    studies = []
    source = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    for n in range(xray):
        folder = directory / f"xray{n}"
        folder.mkdir(parents=True)
        source.StudyInstanceUID = generate_uid()
        source.SeriesInstanceUID = generate_uid()
        source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        source.save_as(folder / "cr.dcm", enforce_file_format=True)
        studies.append(folder)
    for n in range(ct):
        series = write_phantom_series(directory / f"ct{n}", n_slices=96, size=256, seed=n)
        studies.append(series.files[0].parent)
    return studies


def database(kind: str, workdir: Path, server: PostgresServer | None) -> str:
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'data' / 'jobs.sqlite'}"
    assert server is not None
    url = server.new_database()
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


def run_config(
    kind: str, workers: int, studies: list[Path], server: PostgresServer | None
) -> float:
    """Studies per minute for ``workers`` processes on a ``kind`` job log."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-scaleout-{kind}{workers}-"))
    url = database(kind, workdir, server)
    port = free_port()
    base = {
        "DICOM_NODE_AE_TITLE": "AINODE",
        "DICOM_NODE_PORT": str(port),
        "DICOM_NODE_PACS": "none",
        "DICOM_NODE_DATABASE_URL": url,
        "DICOM_NODE_STUDY_QUIET_SECONDS": "1",
        "DICOM_NODE_FSYNC": "false",
        "DICOM_NODE_MIN_FREE_DISK_MB": "100",
        "DICOM_NODE_LOG_LEVEL": "WARNING",
    }

    def process(name: str, roles: str) -> NodeProcess:
        env = {**base, "DICOM_NODE_ROLES": roles, "DICOM_NODE_HTTP_PORT": str(free_port())}
        if roles == "worker":
            env["DICOM_NODE_WORKER_NAME"] = name
        return NodeProcess(workdir / "data", env, workdir / f"{name}.log")

    intake = process("intake", "intake")
    pool = [process(f"worker-{n}", "worker") for n in range(1, workers + 1)]
    assembly = process("assembly", "assembly")
    started = [intake]
    try:
        intake.start()
        for folder in studies:
            subprocess.run(
                [sys.executable, "-m", "dicom_node", "send", "--to", f"AINODE@127.0.0.1:{port}"]
                + [str(p) for p in sorted(folder.iterdir())],
                env=intake.env,
                check=True,
                capture_output=True,
            )
        for worker in pool:
            worker.start(wait_models=False, timeout=300)
            started.append(worker)
        for worker in pool:
            worker.wait_models(timeout=300)
        time.sleep(1.0)  # quiet period over for every study
        assembly.start()
        started.append(assembly)
        joblog = JobLog.open(url)
        try:
            deadline = time.monotonic() + 1800
            while True:
                rows = [r for r in joblog.admin.job_rows() if r.job_id is not None]
                finished = [r for r in rows if r.finished_at is not None]
                if len(finished) == len(studies):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(finished)}/{len(studies)} finished")
                time.sleep(0.5)
        finally:
            joblog.close()
        bad = [r for r in rows if r.state != "done"]
        if bad:
            raise RuntimeError(f"{len(bad)} job(s) not done: {bad[0].state} {bad[0].error}")
        first = min(r.queued_at for r in rows if r.queued_at is not None)
        last = max(r.finished_at for r in rows if r.finished_at is not None)
        per_worker = {r.worker for r in rows}
        span = (last - first).total_seconds()
        print(
            f"  {kind:10s} {workers} worker(s): {len(studies)} studies in {span:6.1f} s "
            f"({len(per_worker)} worker(s) took jobs)",
            flush=True,
        )
        return len(studies) / span * 60
    finally:
        for node in reversed(started):
            node.stop()


def claim_latency(url: str, jobs: int = 500, claimers: int = 1) -> list[float]:
    """Seconds per ``claim_next`` while ``claimers`` threads drain ``jobs`` queued jobs."""
    setup = JobLog.open(url)
    for n in range(jobs):
        uid = f"2.25.{n}.{time.monotonic_ns()}"
        outcome = setup.intake.record_instance(instance_record(uid, f"{uid}.1"))
        later = utcnow() + dt.timedelta(seconds=1)
        setup.assembly.complete_job(outcome.job_id, "xray", [], None, later)
    setup.close()
    times: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(claimers)

    def drain(name: str) -> None:
        joblog = JobLog.open(url)
        mine = []
        barrier.wait()
        while True:
            start = time.perf_counter()
            job = joblog.queue.claim_next(name, 60.0)
            mine.append(time.perf_counter() - start)
            if job is None:
                break
        joblog.close()
        with lock:
            times.extend(mine[:-1])

    threads = [threading.Thread(target=drain, args=(f"c{n}",)) for n in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def describe(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return f"median {statistics.median(ordered) * 1000:5.2f} ms, p95 {p95 * 1000:5.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xray", type=int, default=12)
    parser.add_argument("--ct", type=int, default=3)
    parser.add_argument("--workers", default="1,2,3")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason is not None:
        print(f"bench_scaleout: {reason}")
        return 1
    with PostgresServer() as server, tempfile.TemporaryDirectory() as scratch:
        print("claim latency (500 queued jobs):")
        sqlite_times = claim_latency(f"sqlite:///{scratch}/claims.sqlite")
        pg_times = claim_latency(database("postgresql", Path(scratch), server))
        pg3_times = claim_latency(database("postgresql", Path(scratch), server), claimers=3)
        print(f"  SQLite,     1 claimer:  {describe(sqlite_times)}")
        print(f"  PostgreSQL, 1 claimer:  {describe(pg_times)}")
        print(f"  PostgreSQL, 3 claimers: {describe(pg3_times)}")
        ratio = statistics.median(pg_times) / statistics.median(sqlite_times)
        print(f"  PostgreSQL / SQLite (1 claimer, median): {ratio:.2f}x")

        studies = write_studies(Path(scratch) / "studies", args.xray, args.ct)
        print(f"throughput ({args.xray} X-ray + {args.ct} CT studies, no PACS):")
        baseline = run_config("sqlite", 1, studies, None)
        rates = {}
        for count in (int(n) for n in args.workers.split(",")):
            rates[count] = run_config("postgresql", count, studies, server)
        print(f"  SQLite, 1 worker:      {baseline:6.1f} studies/min (reference)")
        for count, rate in rates.items():
            print(
                f"  PostgreSQL, {count} worker(s): {rate:6.1f} studies/min "
                f"({rate / baseline:.2f}x SQLite, {rate / rates.get(1, rate):.2f}x 1 worker)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

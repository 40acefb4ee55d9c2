"""Scale-out on a real PostgreSQL: one DICOM gateway (intake, assembly, sender) and three
worker processes share the job log and the data directory; Orthanc sends 30 studies (X-ray
and CT), one worker is killed with SIGKILL in the middle of a CT job.  Every study ends with
exactly one set of results in Orthanc, and the job log says which worker ran each job."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.joblog import JobLog
from dicom_node.joblog.records import JobRow
from tests.support.factories import encode, small_cr
from tests.support.net import free_port
from tests.support.node import NodeProcess, run_cli
from tests.support.orthanc import NodeTarget, OrthancServer
from tests.support.postgres import PostgresServer
from tests.support.stack import SC_STORAGE, SEG_STORAGE, SR_STORAGE
from tests.support.synthetic import write_phantom_series

pytestmark = pytest.mark.slow

XRAY_STUDIES = 20
CT_STUDIES = 10
LEASE_SECONDS = 6
RESULT_CLASSES = {SR_STORAGE, SC_STORAGE, SEG_STORAGE}


class Cluster:
    """The processes of one deployment, sharing ``data`` and the PostgreSQL job log."""

    def __init__(self, workdir: Path, database_url: str) -> None:
        self.workdir = workdir
        self.data = workdir / "shared-data"  # the tests' stand-in for NFS
        self.database_url = database_url
        self.node_port = free_port()
        self.orthanc = OrthancServer(
            workdir / "orthanc",
            http_port=free_port(),
            dicom_port=free_port(),
            node=NodeTarget("AINODE", "127.0.0.1", self.node_port),
            # Each study is sent once it is whole (below): with the stable-study routing, an
            # upload slowed by three workers on two cores let Orthanc forward part of a CT
            # series, and the rest became a second version of the study.
            routing=False,
        )
        self.env = {
            "DICOM_NODE_AE_TITLE": "AINODE",
            "DICOM_NODE_HOST": "127.0.0.1",
            "DICOM_NODE_PORT": str(self.node_port),
            "DICOM_NODE_PACS": f"ORTHANC@127.0.0.1:{self.orthanc.dicom_port}",
            "DICOM_NODE_ALLOWED_AES": "ORTHANC",
            "DICOM_NODE_DATABASE_URL": database_url,
            "DICOM_NODE_STUDY_QUIET_SECONDS": "2",
            "DICOM_NODE_WORKER_LEASE_SECONDS": str(LEASE_SECONDS),
            "DICOM_NODE_SEND_BACKOFF_SECONDS": "0.5",
            "DICOM_NODE_SEND_BACKOFF_MAX_SECONDS": "2",
            "DICOM_NODE_MIN_FREE_DISK_MB": "100",
            "DICOM_NODE_FSYNC": "false",
        }
        self.gateway = self._process("gateway", "intake,assembly,sender")
        self.workers = {
            f"worker-{n}": self._process(f"worker-{n}", "worker", worker_name=f"worker-{n}")
            for n in (1, 2, 3)
        }

    def _process(self, name: str, roles: str, **extra: str) -> NodeProcess:
        env = {
            **self.env,
            "DICOM_NODE_ROLES": roles,
            "DICOM_NODE_HTTP_PORT": str(free_port()),
            **{f"DICOM_NODE_{k.upper()}": v for k, v in extra.items()},
        }
        return NodeProcess(self.data, env, self.workdir / f"{name}.log")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.gateway.env, *args)

    def logs(self) -> str:
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text()[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for process in [self.gateway, *self.workers.values()]:
            process.stop()
        self.orthanc.stop()


@pytest.fixture
def cluster(tmp_path: Path, postgres: PostgresServer) -> Iterator[Cluster]:
    deployment = Cluster(tmp_path, postgres.new_database())
    yield deployment
    deployment.stop()


def wait_rows(joblog: JobLog, done: int, timeout: float, cluster: Cluster) -> list[JobRow]:
    deadline = time.monotonic() + timeout
    rows: list[JobRow] = []
    while time.monotonic() < deadline:
        rows = joblog.admin.job_rows()
        if sum(row.state == "done" for row in rows) >= done:
            return rows
        time.sleep(0.5)
    states = Counter(row.state for row in rows)
    raise AssertionError(f"job states {dict(states)} after {timeout:.0f} s\n{cluster.logs()}")


def test_three_workers_one_killed_mid_job_every_study_gets_one_result_set(
    cluster: Cluster, tmp_path: Path
) -> None:
    upgrade = cluster.cli("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert "empty -> " in upgrade.stdout

    cluster.orthanc.start()
    cluster.gateway.start()
    for worker in cluster.workers.values():
        worker.start(wait_models=False)
    for worker in cluster.workers.values():
        worker.wait_models(timeout=300)
    health = cluster.gateway.health()
    assert health["roles"] == ["intake", "assembly", "sender"] and health["worker"] == "off"

    studies: dict[str, str] = {}  # study UID -> pipeline
    for n in range(CT_STUDIES):
        series = write_phantom_series(tmp_path / f"ct{n}", n_slices=40, size=128, seed=n)
        for path in series.files:
            cluster.orthanc.upload(path.read_bytes())
        studies[series.study_instance_uid] = "ct"
    for _ in range(XRAY_STUDIES):
        dataset = small_cr(256, 192)
        cluster.orthanc.upload(encode(dataset))
        studies[str(dataset.StudyInstanceUID)] = "xray"
    for study_uid in studies:  # as "Send to DICOM modality" in Orthanc Explorer, queued
        request = {"Resources": [cluster.orthanc.study_id(study_uid)], "Asynchronous": True}
        cluster.orthanc.request("POST", "/modalities/ainode/store", json.dumps(request).encode())

    # Kill the worker running the first CT job, a few hundred milliseconds into it.
    joblog = JobLog.open(cluster.database_url)
    try:
        victim_job = None
        deadline = time.monotonic() + 300
        while victim_job is None and time.monotonic() < deadline:
            for row in joblog.admin.job_rows():
                if row.state == "running" and row.pipeline == "ct" and row.worker:
                    victim_job = row
                    break
            else:
                time.sleep(0.1)
        assert victim_job is not None, cluster.logs()
        assert victim_job.worker is not None
        victim = victim_job.worker
        time.sleep(0.3)
        cluster.workers[victim].kill9()

        rows = wait_rows(joblog, len(studies), timeout=600, cluster=cluster)
    finally:
        joblog.close()

    versions: dict[str, list[JobRow]] = {}
    for row in rows:
        if row.job_id is not None and row.study_instance_uid is not None:
            versions.setdefault(row.study_instance_uid, []).append(row)
    assert set(versions) == set(studies)  # none lost
    jobs = {uid: max(rows, key=lambda r: r.version or 0) for uid, rows in versions.items()}
    for earlier in (r for rows in versions.values() for r in rows if r not in jobs.values()):
        # A study Orthanc forwarded in two parts: only its last version has results.
        assert earlier.state == "ignored" and earlier.deliveries_total == 0, earlier
    assert all(row.state == "done" for row in jobs.values()), Counter(r.state for r in rows)
    assert {row.pipeline for row in jobs.values()} == {"ct", "xray"}
    assert all(row.pipeline == studies[uid] for uid, row in jobs.items())
    retried = jobs[str(victim_job.study_instance_uid)]
    assert retried.attempts == 2 and retried.worker not in (None, victim)
    ran = Counter(row.worker for row in jobs.values())
    assert set(ran) <= set(cluster.workers) and sum(ran.values()) == len(studies)
    assert len(ran) >= 2, ran  # the queue was shared

    # Exactly one set of results per study in Orthanc: one SR, and no more objects than
    # the job delivered (a second run would have added a second SR and new UIDs).
    for study_uid, row in jobs.items():
        found = cluster.orthanc.results_from(study_uid, "AINODE", RESULT_CLASSES)
        assert len(found.get(SR_STORAGE, [])) == 1, study_uid
        assert sum(len(v) for v in found.values()) == row.deliveries_total
        if row.pipeline == "ct":
            assert len(found.get(SEG_STORAGE, [])) == 1

    # The worker that took the job back counted it.
    taken_back = 'dicom_node_jobs_taken_back_total{outcome="queued"} 1.0'
    survivors = [w for name, w in cluster.workers.items() if name != victim]
    assert sum(taken_back in worker.metrics() for worker in survivors) == 1

    delivered = sum(row.deliveries_total for row in jobs.values())
    print(
        f"\nscale-out: {len(studies)} studies ({XRAY_STUDIES} X-ray, {CT_STUDIES} CT), "
        f"{len(rows)} job rows, jobs per worker {dict(sorted(ran.items()))}; {victim} killed "
        f"in job {victim_job.job_id}, re-run by {retried.worker}; {delivered} result objects "
        f"in Orthanc, one set per study"
    )

    # What an admin sees: which worker ran each job.
    listing = cluster.cli("jobs", "--limit", "100")
    assert listing.returncode == 0, listing.stderr
    header, *lines = listing.stdout.splitlines()
    assert "WORKER" in header
    for row in jobs.values():
        job = f"{row.job_id}" + (f".{row.version}" if row.version and row.version > 1 else "")
        [line] = [line for line in lines if line.split()[0] == job]
        assert str(row.worker) in line.split() and str(row.study_instance_uid) in line

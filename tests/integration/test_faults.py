"""Faults around the running node: association limits, a PACS outage, a full disk, a locked log.

Each test runs ``dicom-node serve`` in a sandbox (``tests.support.nodecheck.SandboxNode``)
and drives it as modalities and a PACS would: pynetdicom SCUs and DCMTK ``echoscu``, a
pynetdicom Storage SCP as the PACS, another process holding the SQLite job log locked.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import cast

import pytest
from pydicom import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE

from tests.support.dicom_client import StoreOutcome, StoreSession, echo
from tests.support.factories import small_cr
from tests.support.mutations import dataset_item
from tests.support.net import free_port
from tests.support.nodecheck import JobLogReader, SandboxNode, orphan_problems, start_node

OUT_OF_RESOURCES = 0xA700
ECHOSCU = ("echoscu", "-to", "10", "-ta", "10")  # connection and ACSE timeouts, seconds


def cr(body_part: str = "HAND") -> Dataset:
    """A small real CR; not a chest by default, so its job ends ``ignored`` without a model."""
    dataset = small_cr()
    dataset.BodyPartExamined = body_part
    return dataset


def store(node: SandboxNode, dataset: Dataset, timeout: float = 20.0) -> StoreOutcome:
    with StoreSession("127.0.0.1", node.port, calling_ae="MODALITY", timeout=timeout) as session:
        assert session.established, node.log_text()[-3000:]
        return session.store(dataset_item(dataset))


def filed(reader: JobLogReader) -> dict[str, str]:
    """SOP Instance UID -> Study Instance UID of every instance row."""
    return {row.sop_instance_uid: row.study_instance_uid for row in reader.instances()}


# -- 16 associations at once, and one more --------------------------------------------------


def test_sixteen_concurrent_associations_and_the_seventeenth_is_refused_cleanly(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    node = start_node(
        sandbox, tmp_path, worker_threads=0, maximum_associations=16, study_quiet_seconds=1
    )
    sessions = [StoreSession("127.0.0.1", node.port, calling_ae="MODALITY") for _ in range(16)]
    for session in sessions:
        session.__enter__()
    try:
        assert all(s.established for s in sessions), node.log_text()[-3000:]

        def one_more() -> tuple[str, float]:
            # DCMTK's echoscu, not a pynetdicom requestor: pynetdicom 3.0's requestor checks
            # ``socket._is_connected`` after its DUL thread has already read our A-ASSOCIATE-RJ
            # and closed the socket, so a fast rejection on a loaded client reads as an abort
            # on its side (its DUL log shows the RJ PDU, then "Aborting Association").
            started = time.monotonic()
            run = subprocess.run(
                [*ECHOSCU, "-aet", "MODALITY", "-aec", "AINODE", "127.0.0.1", str(node.port)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            seconds = time.monotonic() - started
            said = (run.stdout + run.stderr).lower()
            if run.returncode == 0:
                return "established", seconds
            if "association rejected" in said and "local limit exceeded" in said:
                return "rejected", seconds
            return f"aborted: {said.strip()}", seconds

        # While 16 are open: the 17th gets an A-ASSOCIATE-RJ at once (not an abort, no hang).
        result, seconds = one_more()
        assert (result, seconds < 5) == ("rejected", True), (
            result,
            seconds,
            node.log_text()[-3000:],
        )

        # All 16 send at the same time; one more is tried meanwhile.
        sent: dict[int, list[tuple[Dataset, StoreOutcome]]] = {i: [] for i in range(16)}
        start = threading.Barrier(17)

        def modality(index: int) -> None:
            start.wait()
            for _ in range(5):
                dataset = cr()
                sent[index].append((dataset, sessions[index].store(dataset_item(dataset))))

        threads = [threading.Thread(target=modality, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        start.wait()
        during, _ = one_more()
        for thread in threads:
            thread.join(timeout=120)
        assert during == "rejected", node.log_text()[-3000:]
    finally:
        for session in sessions:
            session.close()

    outcomes = [outcome for pairs in sent.values() for _, outcome in pairs]
    assert Counter(o.category for o in outcomes) == {"0x0000": 80}
    # Once they are released, a new association is served.
    assert echo("127.0.0.1", node.port, 5.0) is not None
    reader = JobLogReader(node.data_dir / "jobs.sqlite")
    reader.wait_settled(60)
    rows = filed(reader)
    for pairs in sent.values():
        for dataset, outcome in pairs:
            if outcome.accepted:  # acknowledged: must be in the job log under its study
                assert rows.get(str(dataset.SOPInstanceUID)) == str(dataset.StudyInstanceUID)
    assert orphan_problems(node.data_dir, reader.instances(), reader.rejections()) == []


# -- PACS down for 90 s, default retry schedule ---------------------------------------------


class RecordingPacs:
    """A pynetdicom Storage SCP that counts every C-STORE it receives, by SOP Instance UID."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: Counter[str] = Counter()
        self.first_at: float | None = None
        self._server: object | None = None

    def _store(self, event: evt.Event) -> int:
        request = cast(C_STORE, event.request)
        self.received[str(request.AffectedSOPInstanceUID)] += 1
        if self.first_at is None:
            self.first_at = time.monotonic()
        return 0x0000

    def start(self) -> None:
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store)],
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # type: ignore[attr-defined]


@pytest.mark.slow
def test_pacs_down_for_90_seconds_gets_each_result_exactly_once_with_default_retries(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    pacs = RecordingPacs(free_port())
    # The default retry schedule: send_backoff_seconds 2 doubling, cap 900 s, 20 attempts.
    node = start_node(
        sandbox,
        tmp_path,
        pacs=f"PACS@127.0.0.1:{pacs.port}",
        worker_threads=1,
        study_quiet_seconds=1,
    )
    config = subprocess.run(
        [sys.executable, "-m", "dicom_node", "config"],
        env=node.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for setting in (
        '"send_backoff_seconds": 2.0',
        '"send_backoff_max_seconds": 900.0',
        '"send_max_attempts": 20',
    ):
        assert setting in config, config

    dataset = cr("CHEST")
    study = str(dataset.StudyInstanceUID)
    assert store(node, dataset).category == "0x0000"
    reader = JobLogReader(node.data_dir / "jobs.sqlite")
    deadline = time.monotonic() + 120
    while not any(j.state == "sending" for j in reader.jobs() if j.study_instance_uid == study):
        assert time.monotonic() < deadline, node.log_text()[-3000:]
        time.sleep(0.5)
    down_since = time.monotonic()  # the first delivery attempt has failed by now
    time.sleep(max(0.0, 90 - (time.monotonic() - down_since)))
    pacs.start()
    try:
        back_at = time.monotonic()
        # Attempts at about 0, 2, 6, 14, 30, 62, 126 s after the first: the one at ~126 s finds
        # the PACS; allow that plus slack, without any admin action.
        deadline = back_at + 120
        while True:
            [job] = [j for j in reader.jobs() if j.study_instance_uid == study]
            if job.state in ("done", "dead", "failed"):
                break
            assert time.monotonic() < deadline, (
                f"not delivered {time.monotonic() - back_at:.0f} s after the PACS came back: "
                f"{job}\n{node.log_text()[-3000:]}"
            )
            time.sleep(1)
        time.sleep(5)  # a duplicate would arrive about now
    finally:
        pacs.stop()
    assert job.state == "done", job
    [row] = [r for r in node.jobs_json() if r["study_instance_uid"] == study]
    assert row["deliveries_total"] == row["deliveries_sent"] >= 2  # SR + SC
    assert len(pacs.received) == row["deliveries_total"]
    assert set(pacs.received.values()) == {1}, pacs.received  # each result exactly once


# -- disk guard ---------------------------------------------------------------------------


def test_low_free_disk_is_refused_with_out_of_resources_recorded_and_no_files(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    node = start_node(sandbox, tmp_path, worker_threads=0, min_free_disk_mb=10**9)
    refused = [cr() for _ in range(3)]
    for dataset in refused:
        outcome = store(node, dataset)
        assert (outcome.status, outcome.seconds < 5) == (OUT_OF_RESOURCES, True), outcome
    assert echo("127.0.0.1", node.port, 5.0) is not None  # still serving
    reader = JobLogReader(node.data_dir / "jobs.sqlite")
    rejections = reader.rejections()
    assert sorted(r.sop_instance_uid or "" for r in rejections) == sorted(
        str(d.SOPInstanceUID) for d in refused
    )
    assert {r.status for r in rejections} == {OUT_OF_RESOURCES}
    assert all("disk" in r.reason for r in rejections), rejections
    assert not [p for p in (node.data_dir / "inbox").rglob("*") if p.is_file()]
    assert not [p for p in (node.data_dir / "quarantine").rglob("*") if p.is_file()]
    assert orphan_problems(node.data_dir, reader.instances(), rejections) == []

    # Once the threshold is lowered (a restart with the new setting), stores succeed again.
    node.stop()
    node.env["DICOM_NODE_MIN_FREE_DISK_MB"] = "0"
    node.start()
    accepted = cr()
    assert store(node, accepted).category == "0x0000"
    reader.wait_settled(30)
    assert filed(reader) == {str(accepted.SOPInstanceUID): str(accepted.StudyInstanceUID)}
    assert len(reader.rejections()) == 3
    assert orphan_problems(node.data_dir, reader.instances(), reader.rejections()) == []


def test_a_failed_write_is_out_of_resources_recorded_and_leaves_no_file(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    node = start_node(sandbox, tmp_path, worker_threads=0, min_free_disk_mb=0)
    dataset = cr()
    # A plain file where the study's inbox folder must go: the write fails with an OSError.
    blocker = node.data_dir / "inbox" / str(dataset.StudyInstanceUID)
    blocker.write_bytes(b"not a folder")
    outcome = store(node, dataset)
    assert (outcome.status, outcome.seconds < 5) == (OUT_OF_RESOURCES, True), outcome
    assert echo("127.0.0.1", node.port, 5.0) is not None
    reader = JobLogReader(node.data_dir / "jobs.sqlite")
    rejections = reader.rejections()
    assert len(rejections) == 1, f"the failed write is not recorded as rejected: {rejections}"
    [rejection] = rejections
    assert (rejection.status, rejection.sop_instance_uid) == (
        OUT_OF_RESOURCES,
        str(dataset.SOPInstanceUID),
    )
    assert "\n" not in rejection.reason and len(rejection.reason) < 500
    assert reader.instances() == []
    blocker.unlink()
    assert store(node, dataset).category == "0x0000"  # the sender's retry succeeds
    assert orphan_problems(node.data_dir, reader.instances(), reader.rejections()) == []


# -- the job log locked by another process ---------------------------------------------------

LOCKER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
connection.execute("ROLLBACK")
connection.close()
"""


def test_locked_job_log_gets_prompt_failures_no_orphans_then_recovers(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    node = start_node(sandbox, tmp_path, worker_threads=0, study_quiet_seconds=1)
    assert store(node, cr()).category == "0x0000"  # the log exists and works
    database = node.data_dir / "jobs.sqlite"
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    refused: list[Dataset] = []
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        for _ in range(3):
            dataset = cr()
            outcome = store(node, dataset, timeout=15)
            refused.append(dataset)
            assert outcome.refused and outcome.seconds <= 5.0, (
                f"C-STORE while the job log is locked: {outcome}"
            )
        assert echo("127.0.0.1", node.port, 5.0) is not None
    finally:
        assert locker.stdin is not None
        locker.stdin.close()
        locker.wait(timeout=30)

    after = cr()
    outcome = store(node, after)
    assert outcome.category == "0x0000" and outcome.seconds <= 5.0, outcome
    reader = JobLogReader(database)
    reader.wait_settled(60)
    rows = filed(reader)
    assert rows.get(str(after.SOPInstanceUID)) == str(after.StudyInstanceUID)
    assert not {str(d.SOPInstanceUID) for d in refused} & set(rows)
    assert orphan_problems(node.data_dir, reader.instances(), reader.rejections()) == []

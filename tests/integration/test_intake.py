"""Intake under real senders: completeness at association release, a kill -9 in the middle of a
300-slice send, and 8 concurrent associations (counts, not times; speed is in ``bench/``).

Each test runs ``dicom-node serve`` in a sandbox and sends with DCMTK ``storescu`` (a real
third-party SCU) or pynetdicom where an abort is needed.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pydicom

from tests.support.dicom_client import StoreSession
from tests.support.factories import hand_crs, small_cr
from tests.support.mutations import dataset_item
from tests.support.nodecheck import JobLogReader, SandboxNode, orphan_problems, start_node
from tests.support.synthetic.writer import write_phantom_series

QUIET = 30  # long enough that only a release can start a study within a test's patience


def storescu(node: SandboxNode, files: list[Path], verbose: bool = False) -> list[str]:
    flags = ["-v"] if verbose else []
    return [
        "storescu",
        "-aet",
        "MODALITY",
        "-aec",
        "AINODE",
        *flags,
        "127.0.0.1",
        str(node.port),
    ] + [str(f) for f in files]


def job_states(reader: JobLogReader, study_uid: str) -> list[str]:
    return [
        str(row[0])
        for row in reader.query(
            "SELECT jobs.state FROM jobs JOIN studies ON studies.id = jobs.study_id "
            f"WHERE studies.study_instance_uid = '{study_uid}' ORDER BY jobs.version"
        )
    ]


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_release_starts_the_study_and_an_abort_does_not(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    node = start_node(
        sandbox,
        tmp_path,
        wait_models=False,
        worker_threads=0,
        study_quiet_seconds=QUIET,
        release_grace_seconds=1,
    )
    reader = JobLogReader(node.data_dir / "jobs.sqlite")
    released = hand_crs(tmp_path / "released", 3)
    study = str(pydicom.dcmread(released[0]).StudyInstanceUID)
    subprocess.run(storescu(node, released), check=True, capture_output=True, timeout=60)
    sent_at = time.monotonic()
    assert wait_for(lambda: job_states(reader, study) == ["ignored"], 10), node.log_text()[-2000:]
    assert time.monotonic() - sent_at < QUIET / 2

    aborted = small_cr()
    aborted.BodyPartExamined = "HAND"
    with StoreSession("127.0.0.1", node.port, calling_ae="MODALITY") as session:
        assert session.store(dataset_item(aborted)).accepted
        assert session.assoc is not None
        session.assoc.abort()
    time.sleep(4)  # well past the grace
    assert job_states(reader, str(aborted.StudyInstanceUID)) == ["received"]


def test_a_study_sent_over_two_associations_waits_for_the_open_one(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    node = start_node(
        sandbox,
        tmp_path,
        wait_models=False,
        worker_threads=0,
        study_quiet_seconds=2,
        release_grace_seconds=0.5,
    )
    reader = JobLogReader(node.data_dir / "jobs.sqlite")
    files = hand_crs(tmp_path / "study", 2)
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    with StoreSession("127.0.0.1", node.port, calling_ae="MODALITY") as stalled:
        assert stalled.store(dataset_item(pydicom.dcmread(files[0]))).accepted
        subprocess.run(storescu(node, files[1:]), check=True, capture_output=True, timeout=60)
        time.sleep(4)  # the other sender released, and the quiet period passed: still open
        assert job_states(reader, study) == ["received"]
    assert wait_for(lambda: job_states(reader, study) == ["ignored"], 10)
    # A late instance (a resend from yet another association) makes a new job version.
    late = pydicom.dcmread(files[0])
    late.SOPInstanceUID = pydicom.uid.generate_uid()
    late_path = tmp_path / "late.dcm"
    late.save_as(late_path, enforce_file_format=True)
    subprocess.run(storescu(node, [late_path]), check=True, capture_output=True, timeout=60)
    assert wait_for(lambda: job_states(reader, study) == ["ignored", "ignored"], 10)


def test_kill_minus_9_during_a_300_slice_send_loses_no_acknowledged_instance(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    node = start_node(
        sandbox, tmp_path, wait_models=False, worker_threads=0, fsync="true", study_quiet_seconds=3
    )
    series = write_phantom_series(tmp_path / "ct", n_slices=300, size=128)
    files = sorted(series.files)
    sender = subprocess.Popen(
        storescu(node, files, verbose=True),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    acknowledged: list[Path] = []
    current: list[Path] = []
    pdv: list[int] = []

    def read_output() -> None:
        assert sender.stdout is not None
        for line in sender.stdout:
            if "Max Send PDV:" in line:
                pdv.append(int(line.rsplit(":", 1)[1].strip(" )\n")))
            if "Sending file:" in line:
                current[:] = [Path(line.split("Sending file:", 1)[1].strip())]
            elif "Received Store Response (Success)" in line and current:
                acknowledged.append(current[0])

    reading = threading.Thread(target=read_output)
    reading.start()
    assert wait_for(lambda: len(acknowledged) >= 100, 120), node.log_text()[-2000:]
    node.kill9()
    sender.wait(timeout=60)
    reading.join(timeout=10)
    assert 100 <= len(acknowledged) < 300  # killed in the middle
    assert pdv and pdv[0] > 100_000  # the node offers 128 KiB PDUs (MAX_PDU_BYTES)

    node.start(wait_models=False)
    reader = JobLogReader(node.data_dir / "jobs.sqlite")
    filed = {row.sop_instance_uid: row for row in reader.instances()}
    for path in acknowledged:
        assert str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) in filed
    for row in filed.values():  # whole files only: every pixel byte is there
        ds = pydicom.dcmread(row.path)
        assert len(ds.PixelData) == ds.Rows * ds.Columns * 2
    assert orphan_problems(node.data_dir, reader.instances(), reader.rejections()) == []
    # After the restart the partial study waits its full quiet period, for the resend.
    time.sleep(1.5)
    assert job_states(reader, series.study_instance_uid) == ["received"]
    subprocess.run(storescu(node, files), check=True, capture_output=True, timeout=300)
    assert wait_for(lambda: job_states(reader, series.study_instance_uid) == ["queued"], 20)
    [job] = reader.jobs()
    assert job.instances == 300 and job.version == 1


def test_eight_concurrent_associations_of_300_slices_are_all_filed(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    node = start_node(
        sandbox,
        tmp_path,
        wait_models=False,
        worker_threads=0,
        maximum_associations=10,
        reserved_associations=1,
    )
    senders = []
    studies = []
    for i in range(8):
        series = write_phantom_series(tmp_path / f"ct{i}", n_slices=300, size=32, seed=i)
        studies.append(series.study_instance_uid)
        senders.append(subprocess.Popen(storescu(node, sorted(series.files)), text=True))
    codes = [sender.wait(timeout=600) for sender in senders]
    assert codes == [0] * 8
    reader = JobLogReader(node.data_dir / "jobs.sqlite")
    assert reader.rejections() == []
    per_study = Counter(row.study_instance_uid for row in reader.instances())
    assert per_study == {study: 300 for study in studies}
    # Each study was completed once, with all its instances (released: no quiet wait).
    assert wait_for(lambda: reader.state_counts() == {"queued": 8}, 30), reader.state_counts()
    assert sorted((job.version, job.instances) for job in reader.jobs()) == [(1, 300)] * 8
    assert orphan_problems(node.data_dir, reader.instances(), reader.rejections()) == []

"""A study whose sender did not finish (A-ABORT, kill -9 of the node mid-send, a STOW-RS body cut
short) is held for the resend instead of being analysed after the quiet period; without a resend
it is analysed after ``interrupted_study_hold_seconds`` and its outputs say it is unfinished.

Each test runs ``dicom-node serve`` in a sandbox and sends with DCMTK ``storescu`` (which
releases its association), pynetdicom where an abort is needed, and ``http.client`` for STOW-RS.
"""

from __future__ import annotations

import http.client
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pydicom

from tests.support.dicom_client import StoreSession
from tests.support.factories import hand_crs
from tests.support.mutations import dataset_item
from tests.support.net import free_port
from tests.support.nodecheck import JobLogReader, SandboxNode, start_node
from tests.support.synthetic.writer import write_phantom_series

QUIET = 1  # seconds: every wait below "past the quiet period" is several of them


def storescu(node: SandboxNode, files: list[Path], verbose: bool = False) -> list[str]:
    flags = ["-v"] if verbose else []
    command = ["storescu", "-aet", "MODALITY", "-aec", "AINODE", *flags, "127.0.0.1"]
    return [*command, str(node.port), *(str(f) for f in files)]


def send_then_abort(node: SandboxNode, files: list[Path]) -> None:
    """Store ``files`` in one association and end it with A-ABORT (no release)."""
    with StoreSession("127.0.0.1", node.port, calling_ae="MODALITY") as session:
        assert session.established, node.log_text()[-3000:]
        for path in files:
            assert session.store(dataset_item(pydicom.dcmread(path))).accepted
        assert session.assoc is not None
        session.assoc.abort()


def jobs_of(reader: JobLogReader, study_uid: str) -> list[tuple[str, str | None, int]]:
    """(state, association end, instances) of each job version of the study."""
    return [
        (str(row[0]), row[1], int(row[2]))
        for row in reader.query(
            "SELECT jobs.state, jobs.association_end, jobs.instance_count FROM jobs "
            "JOIN studies ON studies.id = jobs.study_id "
            f"WHERE studies.study_instance_uid = '{study_uid}' ORDER BY jobs.version"
        )
    ]


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def slice_height(path: Path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


def study_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_an_aborted_send_is_held_and_the_released_resend_completes_it_once(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    """Abort after 6 of 12 instances: before, the 6 were analysed after the quiet period."""
    node = start_node(
        sandbox,
        tmp_path,
        wait_models=False,
        worker_threads=0,
        study_quiet_seconds=QUIET,
        release_grace_seconds=0.5,
        interrupted_study_hold_seconds=120,
    )
    reader = JobLogReader(node.data_dir / "jobs.sqlite")
    files = hand_crs(tmp_path / "study", 12)
    study = study_of(files[0])
    send_then_abort(node, files[:6])
    time.sleep(5 * QUIET)
    assert jobs_of(reader, study) == [("received", "interrupted", 6)], node.log_text()[-3000:]
    subprocess.run(storescu(node, files), check=True, capture_output=True, timeout=120)
    assert wait_for(lambda: jobs_of(reader, study)[0][0] != "received", 30), jobs_of(reader, study)
    time.sleep(3 * QUIET)  # nothing else follows: one completion, all 12 instances
    assert jobs_of(reader, study) == [("ignored", "released", 12)]


def test_a_node_killed_mid_send_holds_the_partial_study_after_its_restart(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    """The issue's reproduction: kill -9 during a CT send, restart; before, the partial study
    was analysed after the quiet period whenever the sender resent later than that."""
    node = start_node(
        sandbox,
        tmp_path,
        wait_models=False,
        worker_threads=0,
        study_quiet_seconds=QUIET,
        interrupted_study_hold_seconds=120,
    )
    series = write_phantom_series(tmp_path / "ct", n_slices=160, size=128)
    files = sorted(series.files)
    sender = subprocess.Popen(
        storescu(node, files, verbose=True),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    acknowledged: list[str] = []

    def read_output() -> None:
        assert sender.stdout is not None
        for line in sender.stdout:
            if "Received Store Response (Success)" in line:
                acknowledged.append(line)

    reading = threading.Thread(target=read_output)
    reading.start()
    assert wait_for(lambda: len(acknowledged) >= 40, 120), node.log_text()[-2000:]
    node.kill9()
    sender.wait(timeout=60)
    reading.join(timeout=10)
    assert len(acknowledged) < len(files)  # killed in the middle

    node.start(wait_models=False)
    reader = JobLogReader(node.data_dir / "jobs.sqlite")
    time.sleep(5 * QUIET)
    [(state, end, partial)] = jobs_of(reader, series.study_instance_uid)
    assert (state, end) == ("received", "open"), node.log_text()[-3000:]
    assert partial < len(files)
    subprocess.run(storescu(node, files), check=True, capture_output=True, timeout=300)
    study = series.study_instance_uid
    assert wait_for(lambda: jobs_of(reader, study)[0][0] != "received", 30), jobs_of(reader, study)
    time.sleep(3 * QUIET)
    assert jobs_of(reader, study) == [("queued", "released", len(files))]


def test_without_a_resend_the_study_is_analysed_after_the_hold_and_marked_unfinished(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    hold = 3.0
    node = start_node(
        sandbox,
        tmp_path,
        wait_models=False,
        preload_models="false",
        study_quiet_seconds=0.5,
        interrupted_study_hold_seconds=hold,
    )
    reader = JobLogReader(node.data_dir / "jobs.sqlite")
    series = write_phantom_series(tmp_path / "ct", n_slices=48, size=128)
    files = sorted(series.files, key=slice_height)
    send_then_abort(node, files[:40])  # the lower 40 slices: analysable, but not all there
    aborted = time.monotonic()
    study = series.study_instance_uid
    assert wait_for(lambda: jobs_of(reader, study)[0][0] != "received", 60), node.log_text()[-3000:]
    assert time.monotonic() - aborted >= hold - 0.5  # the hold, not the 0.5 s quiet period
    assert wait_for(lambda: jobs_of(reader, study)[0][0] == "done", 180), node.log_text()[-3000:]
    assert jobs_of(reader, study) == [("done", "interrupted", 40)]
    [job] = [j for j in node.jobs_json() if j["study_instance_uid"] == study]
    assert "may be incomplete" in job["summary"]["unfinished"]
    outputs = [pydicom.dcmread(p) for p in sorted((node.data_dir / "outbox" / study).glob("*.dcm"))]
    [sr] = [ds for ds in outputs if ds.Modality == "SR"]
    assert sr.CompletionFlag == "PARTIAL"
    assert "may be incomplete" in sr.CompletionFlagDescription
    pictures = [ds for ds in outputs if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"]
    assert pictures and all("UNFINISHED" in ds.SeriesDescription for ds in pictures)
    assert "queued UNFINISHED" in node.log_text()


def stow(node: SandboxNode, files: list[Path], cut_last: bool) -> int:
    """POST the files as one multipart body; ``cut_last``: the body stops inside the last part
    (no boundary after it), as an upload cut short; returns the HTTP status."""
    boundary = uuid.uuid4().hex
    body = b""
    for path in files:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += path.read_bytes() + b"\r\n"
    if cut_last:
        body = body[: len(body) // 2 + len(body) // 4]
    else:
        body += f"--{boundary}--\r\n".encode()
    port = int(node.env["DICOM_NODE_DICOMWEB_PORT"])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        kind = f'multipart/related; type="application/dicom"; boundary={boundary}'
        connection.request("POST", "/dicom-web/studies", body, {"Content-Type": kind})
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_stow_request_cut_short_files_nothing_and_a_complete_one_completes_at_once(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    # The whole multipart body is checked before any part is filed, so an upload cut short
    # leaves no partial study to hold; a complete request counts as a release (the grace).
    node = start_node(
        sandbox,
        tmp_path,
        wait_models=False,
        worker_threads=0,
        dicomweb_port=free_port(),
        study_quiet_seconds=QUIET,
        release_grace_seconds=0.5,
        interrupted_study_hold_seconds=120,
    )
    reader = JobLogReader(node.data_dir / "jobs.sqlite")
    cut = hand_crs(tmp_path / "cut", 2)
    assert stow(node, cut, cut_last=True) == 400
    complete = hand_crs(tmp_path / "complete", 2)
    assert stow(node, complete, cut_last=False) == 200
    time.sleep(5 * QUIET)
    assert jobs_of(reader, study_of(cut[0])) == []
    assert jobs_of(reader, study_of(complete[0])) == [("ignored", "released", 2)]

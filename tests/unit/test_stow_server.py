"""The STOW-RS intake over real HTTP on loopback, with ``dicomweb-client`` as the sender."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from pydicom.uid import generate_uid

from dicom_node.admin.audit import AuditLog
from dicom_node.admin.metrics import Metrics
from dicom_node.config import Settings
from dicom_node.errors import DicomStatus
from dicom_node.intake.filing import Intake
from dicom_node.intake.scp import stow_accepted
from dicom_node.intake.stow_server import CALLING_AE, StowServer
from dicom_node.joblog import JobLog
from dicom_node.joblog.records import RecordOutcome
from dicom_node.storage import free_disk_mb
from tests.support.factories import small_cr
from tests.support.net import free_port

FAILED_SOP_SEQUENCE = "FailedSOPSequence"
MIB = 1024 * 1024


@dataclass
class RunningStow:
    settings: Settings
    joblog: JobLog
    url: str
    audit_path: Path
    armed: list[tuple[RecordOutcome, int]] = field(default_factory=list)
    ended: list[tuple[int, bool]] = field(default_factory=list)

    def client(self) -> DICOMwebClient:
        client = DICOMwebClient(self.url)
        client.set_http_retry_params(retry=False)
        return client


StartStow = Callable[..., RunningStow]


@pytest.fixture
def start_stow(tmp_path: Path) -> Iterator[StartStow]:
    """Start STOW-RS servers in this process; keyword arguments override ``Settings``
    (``joblog_path`` puts the job log elsewhere than the data directory)."""
    stopping: list[Callable[[], None]] = []

    def start(joblog_path: Path | None = None, **overrides: Any) -> RunningStow:
        number = len(stopping)
        values: dict[str, Any] = {
            "data_dir": tmp_path / f"data{number}",
            "port": free_port(),
            "dicomweb_port": free_port(),
            "fsync": False,
            "min_free_disk_mb": 0,
            "audit_log": tmp_path / f"audit{number}.jsonl",
            **overrides,
        }
        settings = Settings(**values)
        (settings.data_dir / "quarantine").mkdir(parents=True, exist_ok=True)
        joblog = JobLog.open(joblog_path or settings.database_path)
        audit = AuditLog.for_settings(settings)
        url = f"http://127.0.0.1:{settings.dicomweb_port}/dicom-web"
        running = RunningStow(settings, joblog, url, settings.audit_log or tmp_path)
        intake = Intake(
            settings,
            joblog.intake,
            Metrics(),
            lambda outcome, key: running.armed.append((outcome, key)),
            audit,
            lambda key, released: running.ended.append((key, released)),
        )
        server = StowServer(intake, stow_accepted(), audit)
        server.start()

        def stop() -> None:
            server.stop()
            audit.close()
            joblog.close()

        stopping.append(stop)
        return running

    try:
        yield start
    finally:
        for stop in reversed(stopping):
            stop()


@pytest.fixture
def stow(start_stow: StartStow) -> RunningStow:
    return start_stow()


def _encoded(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_instances_are_filed_recorded_and_end_like_a_released_association(
    stow: RunningStow,
) -> None:
    first, second = small_cr(), small_cr()
    second.StudyInstanceUID = first.StudyInstanceUID
    big = small_cr(rows=1024, columns=768)  # > 1 MB: dicomweb-client sends it chunked

    response = stow.client().store_instances([first, second, big])

    stored = {str(item.ReferencedSOPInstanceUID) for item in response.ReferencedSOPSequence}
    assert stored == {str(d.SOPInstanceUID) for d in (first, second, big)}
    assert FAILED_SOP_SEQUENCE not in response
    instances = stow.joblog.assembly.study_instances(stow.armed[0][0].job_id)
    assert {i.sop_instance_uid for i in instances} == {first.SOPInstanceUID, second.SOPInstanceUID}
    for instance in instances:
        assert instance.calling_ae == CALLING_AE
        assert pydicom.dcmread(instance.path).PixelData == first.PixelData
    # One request = one association: every instance under its key, ended once, as released.
    assert {key for _, key in stow.armed} == {key for key, _ in stow.ended}
    assert [released for _, released in stow.ended] == [True]
    assert not list(stow.settings.data_dir.glob(".tmp-*"))  # spooled body and parts removed
    assert "association_end" in stow.settings.audit_log.read_text()  # type: ignore[union-attr]


def test_refused_parts_get_failure_reasons_and_the_rest_is_stored(stow: RunningStow) -> None:
    good = small_cr()
    not_analysed = small_cr()
    not_analysed.SOPClassUID = not_analysed.file_meta.MediaStorageSOPClassUID = (
        "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    )
    no_study = small_cr()
    del no_study.StudyInstanceUID

    response = requests.post(
        f"{stow.url}/studies",
        data=_multipart([_encoded(good), _encoded(not_analysed), _encoded(no_study)], b"XyZ"),
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=XyZ'},
        timeout=30,
    )

    assert response.status_code == 202  # some stored, some failed (PS3.18 10.5.3)
    body = Dataset.from_json(response.json())
    assert [str(i.ReferencedSOPInstanceUID) for i in body.ReferencedSOPSequence] == [
        good.SOPInstanceUID
    ]
    reasons = {str(i.ReferencedSOPInstanceUID): i.FailureReason for i in body.FailedSOPSequence}
    assert reasons == {
        not_analysed.SOPInstanceUID: DicomStatus.SOP_CLASS_NOT_SUPPORTED,
        no_study.SOPInstanceUID: DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    }
    rejected = [row for row in stow.joblog.admin.job_rows() if row.state == "rejected"]
    assert sorted(row.error or "" for row in rejected) == [
        f"SOP Class not analysed by this node (status 0x0122, from {CALLING_AE})",
        f"StudyInstanceUID is missing (status 0xA900, from {CALLING_AE})",
    ]
    assert len(list(stow.settings.quarantine_dir.glob("*.dcm"))) == 2  # the bytes are kept


def test_a_study_url_refuses_instances_of_another_study_with_409(stow: RunningStow) -> None:
    dataset = small_cr()
    with pytest.raises(requests.HTTPError) as raised:
        stow.client().store_instances([dataset], study_instance_uid=generate_uid())
    assert raised.value.response.status_code == 409  # none stored
    [failed] = Dataset.from_json(raised.value.response.json()).FailedSOPSequence
    assert failed.FailureReason == DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert stow.armed == []


@pytest.mark.parametrize(
    ("content_type", "body", "code"),
    [
        ("application/dicom", b"DICM", 415),
        ('multipart/related; type="application/dicom+json"; boundary=a', b"--a--", 415),
        ('multipart/related; type="application/dicom"', b"--a--", 400),
        ('multipart/related; type="application/dicom"; boundary=a', b"no delimiter", 400),
        ('multipart/related; type="application/dicom"; boundary=a', b"--a--\r\n", 400),
    ],
)
def test_malformed_requests_are_refused_whole(
    stow: RunningStow, content_type: str, body: bytes, code: int
) -> None:
    response = requests.post(
        f"{stow.url}/studies", data=body, headers={"Content-Type": content_type}, timeout=30
    )
    assert response.status_code == code
    assert response.json()["error"]
    assert stow.armed == [] and stow.joblog.admin.job_rows() == []


def test_only_post_to_studies_is_served(stow: RunningStow) -> None:
    assert requests.get(f"{stow.url}/studies", timeout=30).status_code == 405
    assert requests.post(f"{stow.url}/series", data=b"", timeout=30).status_code == 404


def _multipart(parts: list[bytes], boundary: bytes) -> bytes:
    out = b""
    for part in parts:
        out += b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


# -- raw HTTP: framing, refusals, temporary files (issue 26) ---------------------------------

CONTENT_TYPE = 'multipart/related; type="application/dicom"; boundary=XyZ'
SUMMARY = "refused (summarised, not quarantined or recorded one by one)"


def _head(*fields: str, method: str = "POST", path: str = "/dicom-web/studies") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: node", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _post_head(*fields: str) -> bytes:
    return _head(f"Content-Type: {CONTENT_TYPE}", *fields)


def _exchange(stow: RunningStow, data: bytes, hang_up: bool = False) -> bytes:
    """Send raw bytes; the whole answer (empty when the server closed without one)."""
    with socket.create_connection(("127.0.0.1", stow.settings.dicomweb_port), timeout=60) as conn:
        with contextlib.suppress(OSError):  # refused and closed before all was read
            conn.sendall(data)
        if hang_up:
            return b""
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _json(answer: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return result


def _sized_post(body: bytes) -> bytes:
    return _post_head(f"Content-Length: {len(body)}") + body


def _chunks(body: bytes, size: int = 65536) -> bytes:
    out = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    )
    return out + b"0\r\n\r\n"


def _wait_ended(stow: RunningStow, requests_ended: int) -> None:
    """Until the server has finished that many requests (its temporary files are gone by then)."""
    deadline = time.monotonic() + 60
    while len(stow.ended) < requests_ended:
        assert time.monotonic() < deadline, "the request never ended"
        time.sleep(0.05)


def _spool_files(stow: RunningStow) -> list[Path]:
    return sorted(stow.settings.data_dir.rglob(".tmp-stow-*"))


def _series(count: int) -> list[bytes]:
    """``count`` valid instances of one study (one small CR, new SOP Instance UIDs)."""
    dataset = small_cr()
    parts = []
    for _ in range(count):
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        parts.append(_encoded(dataset))
    return parts


def _filed(stow: RunningStow) -> list[Path]:
    return sorted(p for p in stow.settings.inbox_dir.rglob("*.dcm"))


GOOD = _multipart(_series(1), b"XyZ")


@pytest.mark.parametrize(
    ("case", "data", "hang_up", "code"),
    [
        (
            "length, body cut, client gone",
            _post_head(f"Content-Length: {len(GOOD)}") + GOOD[:99],
            True,
            None,
        ),
        (
            "length, body cut, client silent",
            _post_head(f"Content-Length: {len(GOOD)}") + GOOD[:99],
            False,
            408,
        ),
        (
            "chunked, bad size line",
            _post_head("Transfer-Encoding: chunked") + b"10\r\n" + GOOD[:16] + b"\r\nzz\r\n",
            False,
            400,
        ),
        (
            "chunked, body cut, client gone",
            _post_head("Transfer-Encoding: chunked") + b"1000\r\n" + GOOD[:99],
            True,
            None,
        ),
        (
            "chunked, body cut, client silent",
            _post_head("Transfer-Encoding: chunked") + b"1000\r\n" + GOOD[:99],
            False,
            408,
        ),
        ("Content-Length: 0", _post_head("Content-Length: 0"), False, 400),
        ("chunked, no data", _post_head("Transfer-Encoding: chunked") + b"0\r\n\r\n", False, 400),
        ("no boundary in the body", _post_head("Content-Length: 5") + b"hello", False, 400),
    ],
)
def test_a_refused_request_leaves_no_temporary_file(
    start_stow: StartStow, case: str, data: bytes, hang_up: bool, code: int | None
) -> None:
    stow = start_stow(network_timeout_seconds=1.0)
    answer = _exchange(stow, data, hang_up)
    _wait_ended(stow, 1)
    if code is not None:
        assert _status(answer) == code, answer
        assert _json(answer)["error"]
    assert _spool_files(stow) == [], case
    assert _filed(stow) == [] and stow.joblog.admin.job_rows() == []
    assert _status(_exchange(stow, _sized_post(GOOD))) == 200


def test_oversized_chunked_uploads_are_refused_and_leave_nothing(
    start_stow: StartStow, tmp_path: Path
) -> None:
    # 1 MB of room above the disk guard: a chunked body (no length to check first) of 40 MB
    # is refused while it arrives, after its first MB was written.
    stow = start_stow(min_free_disk_mb=int(free_disk_mb(tmp_path)) - 1)
    body = _chunks(b"x" * (40 * MIB))
    for number in range(1, 4):
        answer = _exchange(stow, _post_head("Transfer-Encoding: chunked") + body)
        assert _status(answer) == 413 and "free disk" in _json(answer)["error"]
        _wait_ended(stow, number)
        assert _spool_files(stow) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """A real file system of a few MiB (tmpfs), where the disk really fills up (ENOSPC).
    Mounting needs root with CAP_SYS_ADMIN: skipped, saying so, where that is missing."""
    mounted: list[Path] = []

    def mount(size_mib: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("cannot mount a small tmpfs here: no mount command")
        command = ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)


def _wait_spooling(stow: RunningStow) -> None:
    deadline = time.monotonic() + 60
    while not any(path.stat().st_size for path in _spool_files(stow)):
        assert time.monotonic() < deadline, "the node never started spooling"
        time.sleep(0.01)


def _fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_the_disk_filling_up_while_a_body_arrives_is_a_507_and_leaves_nothing(
    small_disk: Callable[[int], Path], start_stow: StartStow, tmp_path: Path
) -> None:
    disk = small_disk(4)
    stow = start_stow(data_dir=disk / "data", joblog_path=tmp_path / "jobs.sqlite")
    body = _chunks(b"x" * (3 * MIB))
    with socket.create_connection(("127.0.0.1", stow.settings.dicomweb_port), timeout=60) as conn:
        conn.sendall(_post_head("Transfer-Encoding: chunked") + body[: MIB // 2])
        _wait_spooling(stow)  # the node has measured the free space and started writing
        filler = _fill(disk)  # another writer takes the rest of the disk meanwhile
        with contextlib.suppress(OSError):
            conn.sendall(body[MIB // 2 :])
        answer = conn.makefile("rb").read()
    assert _status(answer) == 507 and "disk filled up" in _json(answer)["error"]
    _wait_ended(stow, 1)
    assert _spool_files(stow) == []
    filler.unlink()
    assert _status(_exchange(stow, _sized_post(GOOD))) == 200


def test_the_disk_filling_up_while_parts_are_filed_answers_which_were_stored(
    small_disk: Callable[[int], Path], start_stow: StartStow, tmp_path: Path
) -> None:
    # 7 MiB: the spooled body (3 x 1.5 MiB) and the first part fit, the second part does not.
    disk = small_disk(7)
    stow = start_stow(data_dir=disk / "data", joblog_path=tmp_path / "jobs.sqlite")
    datasets = [small_cr(rows=1024, columns=768) for _ in range(3)]
    body = _multipart([_encoded(d) for d in datasets], b"XyZ")

    answer = _exchange(stow, _sized_post(body))

    assert _status(answer) == 202, answer[:300]  # some stored (PS3.18 10.5.3)
    response = Dataset.from_json(_json(answer))
    uids = [str(d.SOPInstanceUID) for d in datasets]
    assert [str(i.ReferencedSOPInstanceUID) for i in response.ReferencedSOPSequence] == uids[:1]
    failed = {str(i.ReferencedSOPInstanceUID): i.FailureReason for i in response.FailedSOPSequence}
    assert failed == {uid: DicomStatus.OUT_OF_RESOURCES for uid in uids[1:]}
    assert [p.stem for p in _filed(stow)] == uids[:1]
    assert _spool_files(stow) == []
    [summary] = [r.error or "" for r in stow.joblog.admin.job_rows() if r.state == "rejected"]
    assert "2 x 0xA700 writing the part to disk failed (out of disk space)" in summary
    assert _status(_exchange(stow, _sized_post(GOOD))) == 200


# -- parts per request, refusals per request -------------------------------------------------


def test_more_parts_than_the_limit_are_refused_before_anything_is_filed(
    start_stow: StartStow,
) -> None:
    stow = start_stow(stow_max_parts_per_request=5)
    too_many = _multipart(_series(6), b"XyZ")

    answer = _exchange(stow, _sized_post(too_many))

    assert _status(answer) == 413
    assert "stow_max_parts_per_request" in _json(answer)["error"]
    assert _filed(stow) == [] and stow.joblog.admin.job_rows() == []
    assert list(stow.settings.quarantine_dir.iterdir()) == []
    _wait_ended(stow, 1)
    assert _spool_files(stow) == []
    five = _multipart(_series(5), b"XyZ")
    assert _status(_exchange(stow, _sized_post(five))) == 200


def test_a_300_slice_series_passes_in_one_request_with_the_default_limit(
    stow: RunningStow,
) -> None:
    body = _multipart(_series(300), b"XyZ")
    answer = _exchange(stow, _sized_post(body))
    assert _status(answer) == 200
    assert len(Dataset.from_json(_json(answer)).ReferencedSOPSequence) == 300
    assert len(_filed(stow)) == 300


def test_garbage_parts_past_the_first_ten_are_summarised_once(
    stow: RunningStow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dicom_node")
    [good] = _series(1)
    body = _multipart([b"garbage %d" % i for i in range(25)] + [good], b"XyZ")

    answer = _exchange(stow, _sized_post(body))

    assert _status(answer) == 202
    response = Dataset.from_json(_json(answer))
    assert len(response.ReferencedSOPSequence) == 1
    reasons = [item.FailureReason for item in response.FailedSOPSequence]
    assert reasons == [DicomStatus.CANNOT_UNDERSTAND] * 25  # every part has its item
    assert len(list(stow.settings.quarantine_dir.iterdir())) == 10
    rejected = [r.error or "" for r in stow.joblog.admin.job_rows() if r.state == "rejected"]
    assert len(rejected) == 11
    [summary] = [error for error in rejected if SUMMARY in error]
    assert summary.startswith("15 part(s) of STOW-RS request stow-")
    assert "15 x 0xC000 not a DICOM Part 10 file" in summary
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("refused instance") for m in messages) == 10
    assert sum(SUMMARY in m for m in messages) == 1


# -- the job log locked by another connection -------------------------------------------------


def test_a_locked_job_log_fails_the_rest_of_the_request_at_once(stow: RunningStow) -> None:
    assert _status(_exchange(stow, _sized_post(GOOD))) == 200
    parts = _series(20)
    body = _multipart(parts, b"XyZ")
    holder = sqlite3.connect(stow.settings.database_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        answer = _exchange(stow, _sized_post(body))
        seconds = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert _status(answer) == 409
    failed = Dataset.from_json(_json(answer)).FailedSOPSequence
    assert [i.FailureReason for i in failed] == [DicomStatus.OUT_OF_RESOURCES] * 20
    # One busy timeout (2 s) for the request, not two per part (80 s before): generous bound.
    assert seconds < 30, seconds
    assert len(_filed(stow)) == 1  # only the instance stored before the lock
    assert _spool_files(stow) == []
    assert _status(_exchange(stow, _sized_post(body))) == 200


# -- HTTP framing (RFC 9112) -----------------------------------------------------------------

CHUNKED = "Transfer-Encoding: chunked"


@pytest.mark.parametrize(
    ("case", "data", "code"),
    [
        ("Content-Length: abc", _post_head("Content-Length: abc") + GOOD, 400),
        ("negative Content-Length", _post_head("Content-Length: -1") + GOOD, 400),
        ("signed Content-Length", _post_head(f"Content-Length: +{len(GOOD)}") + GOOD, 400),
        (
            "duplicate Content-Length",
            _post_head(f"Content-Length: {len(GOOD)}", f"Content-Length: {len(GOOD)}") + GOOD,
            400,
        ),
        (
            "conflicting Content-Length",
            _post_head(f"Content-Length: {len(GOOD)}", f"Content-Length: {len(GOOD) + 5}") + GOOD,
            400,
        ),
        (
            "Content-Length and chunked",
            _post_head(f"Content-Length: {len(GOOD)}", CHUNKED) + _chunks(GOOD),
            400,
        ),
        ("gzip, chunked", _post_head("Transfer-Encoding: gzip, chunked") + _chunks(GOOD), 501),
        ("gzip alone", _post_head("Transfer-Encoding: gzip") + GOOD, 501),
        ("chunked twice", _post_head(CHUNKED, CHUNKED) + _chunks(GOOD), 400),
        ("chunk size -1", _post_head(CHUNKED) + b"-1\r\n" + GOOD, 400),
        ("chunk size 0x..", _post_head(CHUNKED) + b"0x%x\r\n" % len(GOOD) + GOOD, 400),
        ("chunk size 1_0", _post_head(CHUNKED) + b"1_0\r\n" + GOOD[:16] + b"\r\n0\r\n\r\n", 400),
        ("chunk size +10", _post_head(CHUNKED) + b"+10\r\n" + GOOD[:16] + b"\r\n0\r\n\r\n", 400),
        ("17 hex digits", _post_head(CHUNKED) + b"0" * 16 + b"1\r\nx\r\n0\r\n\r\n", 400),
        ("size line with LF only", _post_head(CHUNKED) + b"%x\n" % len(GOOD) + GOOD, 400),
        (
            "chunk not followed by CRLF",
            _post_head(CHUNKED) + b"%x\r\n" % len(GOOD) + GOOD + b"XX0\r\n\r\n",
            400,
        ),
        ("endless size line", _post_head(CHUNKED) + b"1;" + b"e" * 5000 + b"\r\n", 400),
        ("no length at all", _post_head(), 411),
        (
            "delimiter run into the boundary",
            _post_head("Content-Length: 50") + b"--XyZabc\r\n\r\nDICM\r\n--XyZ--\r\n".ljust(50),
            400,
        ),
        (
            "a valid part, then a broken one",
            _sized_post(
                GOOD[: -len(b"--XyZ--\r\n")] + b"--XyZ\r\nno end of headers\r\n--XyZ--\r\n"
            ),
            400,
        ),
    ],
)
def test_malformed_framing_is_refused_with_a_reason_and_no_traceback(
    stow: RunningStow,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    case: str,
    data: bytes,
    code: int,
) -> None:
    answer = _exchange(stow, data)

    assert _status(answer) == code, (case, answer[:300])
    assert _json(answer)["error"]
    _wait_ended(stow, 1)
    assert _filed(stow) == [] and stow.joblog.admin.job_rows() == []  # nothing filed
    assert _spool_files(stow) == []
    assert not [r for r in caplog.records if r.exc_info], case
    assert "Traceback" not in capfd.readouterr().err, case


def test_chunk_extensions_and_trailers_are_tolerated(stow: RunningStow) -> None:
    body = b"%x;name=value; other\r\n%s\r\n0;last\r\nX-Trailer: 1\r\n\r\n" % (len(GOOD), GOOD)
    assert _status(_exchange(stow, _post_head(CHUNKED) + body)) == 200


def test_expect_100_continue_is_refused_before_the_body_is_sent(
    start_stow: StartStow, tmp_path: Path
) -> None:
    stow = start_stow(min_free_disk_mb=int(free_disk_mb(tmp_path)) - 1)
    with socket.create_connection(("127.0.0.1", stow.settings.dicomweb_port), timeout=60) as conn:
        conn.sendall(_post_head(f"Content-Length: {50 * MIB}", "Expect: 100-continue"))
        answer = conn.makefile("rb").read()  # no "100 Continue": the final answer, then close
    assert answer.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD"])
def test_other_methods_get_405_with_allow(stow: RunningStow, method: str) -> None:
    answer = _exchange(stow, _head(method=method))
    assert _status(answer) == 405
    assert b"\r\nAllow: POST\r\n" in answer.split(b"\r\n\r\n", 1)[0] + b"\r\n"


@pytest.mark.parametrize(
    ("request_line", "code"),
    [(b"POST /dicom-web/studies HTTP/2.0", 505), (b"POST /dicom-web/studies H\xf2TP/1.1", 400)],
)
def test_a_bad_request_line_is_answered_with_a_status_line(
    stow: RunningStow, request_line: bytes, code: int
) -> None:
    answer = _exchange(stow, request_line + b"\r\nHost: node\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 %d " % code)  # not an HTTP/0.9 bare body


def test_a_part_whose_file_meta_cannot_be_read_is_a_failed_part(stow: RunningStow) -> None:
    [part] = _series(1)
    broken = part.replace(b"\x02\x00\x03\x00UI", b"\x02\x00\x03\x00JI", 1)  # unknown VR
    assert broken != part
    answer = _exchange(stow, _sized_post(_multipart([broken, *_series(1)], b"XyZ")))
    assert _status(answer) == 202
    [failed] = Dataset.from_json(_json(answer)).FailedSOPSequence
    assert failed.FailureReason == DicomStatus.CANNOT_UNDERSTAND

"""The STOW-RS intake over real HTTP on loopback, with ``dicomweb-client`` as the sender."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
from tests.support.factories import small_cr
from tests.support.net import free_port

FAILED_SOP_SEQUENCE = "FailedSOPSequence"


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


@pytest.fixture
def stow(tmp_path: Path) -> Iterator[RunningStow]:
    settings = Settings(
        data_dir=tmp_path / "data",
        port=free_port(),
        dicomweb_port=free_port(),
        fsync=False,
        min_free_disk_mb=0,
        audit_log=tmp_path / "audit.jsonl",
    )
    (settings.data_dir / "quarantine").mkdir(parents=True)
    joblog = JobLog.open(settings.database_path)
    audit = AuditLog.for_settings(settings)
    running = RunningStow(
        settings, joblog, f"http://127.0.0.1:{settings.dicomweb_port}/dicom-web", tmp_path / "a"
    )
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
    try:
        yield running
    finally:
        server.stop()
        audit.close()
        joblog.close()


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

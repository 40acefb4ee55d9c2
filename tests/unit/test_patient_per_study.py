"""One study, one patient (issue 26, items 1 and 2): an instance naming another patient than its
study's is refused by C-STORE (0xA900) and STOW-RS (409) in every order, never analysed with the
study; a resend into another series leaves no orphan file behind."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom import Dataset
from pydicom.uid import generate_uid

from dicom_node.admin.audit import AuditLog
from dicom_node.admin.metrics import Metrics
from dicom_node.errors import DicomStatus, InstanceRejected
from dicom_node.intake.filing import Intake, patient_key
from dicom_node.intake.scp import stow_accepted
from dicom_node.intake.stow_server import StowServer
from dicom_node.joblog import JobLog
from dicom_node.joblog.records import InstanceRecord
from tests.support.factories import instance_record, small_cr
from tests.support.net import free_port
from tests.support.scp import RunningScp, send, start_scp_in_process

PATIENT_A, PATIENT_B = "PAT-A-0001", "PAT-B-0002"


def _of_patient(template: Dataset, patient_id: str, issuer: str | None = None) -> Dataset:
    """An instance of ``template``'s study and series with a fresh SOP Instance UID."""
    ds = copy.deepcopy(template)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient_id
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    return ds


def _patient_a() -> Dataset:
    ds = small_cr()
    ds.PatientID = PATIENT_A
    return ds


def test_the_key_is_one_way_and_names_id_and_issuer() -> None:
    a = _patient_a()
    key = patient_key(a)
    assert PATIENT_A not in key and len(key) == 32
    assert patient_key(_of_patient(a, PATIENT_A)) == key
    assert patient_key(_of_patient(a, PATIENT_B)) != key
    assert patient_key(_of_patient(a, PATIENT_A, issuer="HOSPITAL2")) != key


def test_the_job_log_refuses_a_second_patient_and_adopts_legacy_studies(tmp_path: Path) -> None:
    joblog = JobLog.open(tmp_path / "jobs.sqlite")
    try:
        first = instance_record("1.2.3", "1.2.3.1")
        joblog.intake.record_instance(_with_key(first, "a" * 32))
        joblog.intake.record_instance(_with_key(instance_record("1.2.3", "1.2.3.2"), "a" * 32))
        other = _with_key(instance_record("1.2.3", "1.2.3.3"), "b" * 32)
        with pytest.raises(InstanceRejected) as refused:
            joblog.intake.record_instance(other)
        assert refused.value.status == DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
        assert "patient" in refused.value.reason and "b" * 32 not in refused.value.reason
        with pytest.raises(InstanceRejected):
            joblog.intake.check_patient(other)
        [row] = joblog.admin.job_rows()
        assert row.instances == 2  # nothing of the other patient was filed
    finally:
        joblog.close()


def _with_key(record: InstanceRecord, key: str) -> InstanceRecord:
    return dataclasses.replace(record, patient_key=key)


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[RunningScp]:
    yield from start_scp_in_process(tmp_path, allowed_aes=("MODALITY",))


def _rejections(scp: RunningScp) -> list[str]:
    return [r.error or "" for r in scp.joblog.admin.job_rows() if r.state == "rejected"]


def test_c_store_refuses_another_patient_in_the_same_study(scp: RunningScp) -> None:
    a = _patient_a()
    assert send(scp, a) == 0x0000
    b = _of_patient(a, PATIENT_B)
    assert send(scp, b) == 0xA900
    assert any("patient" in reason for reason in _rejections(scp))
    assert all(PATIENT_B not in reason and PATIENT_A not in reason for reason in _rejections(scp))
    instances = scp.joblog.assembly.study_instances(scp.armed[0].job_id)
    assert [i.sop_instance_uid for i in instances] == [str(a.SOPInstanceUID)]
    assert len(list(scp.settings.quarantine_dir.glob("*.dcm"))) == 1  # B's bytes kept apart
    assert send(scp, _of_patient(a, PATIENT_A)) == 0x0000  # the study's own patient still may


def test_a_resend_naming_another_patient_does_not_replace_the_stored_file(
    scp: RunningScp,
) -> None:
    a = _patient_a()
    assert send(scp, a) == 0x0000
    impostor = copy.deepcopy(a)
    impostor.PatientID = PATIENT_B  # same study, same SOP Instance UID
    assert send(scp, impostor) == 0xA900
    [instance] = scp.joblog.assembly.study_instances(scp.armed[0].job_id)
    assert pydicom.dcmread(instance.path).PatientID == PATIENT_A


def test_a_resend_into_another_series_leaves_no_orphan(scp: RunningScp) -> None:
    a = _patient_a()
    assert send(scp, a) == 0x0000
    moved = copy.deepcopy(a)
    moved.SeriesInstanceUID = generate_uid()
    assert send(scp, moved) == 0x0000
    [instance] = scp.joblog.assembly.study_instances(scp.armed[0].job_id)
    assert instance.series_instance_uid == str(moved.SeriesInstanceUID)
    inbox = sorted(p for p in scp.settings.inbox_dir.rglob("*.dcm"))
    assert inbox == [Path(instance.path)]  # the earlier series' file is gone


@pytest.fixture
def stow_and_scp(tmp_path: Path) -> Iterator[tuple[RunningScp, str]]:
    """The node's two intakes on one job log, as in `serve` with DICOMWEB_PORT set."""
    for running in start_scp_in_process(
        tmp_path, allowed_aes=("MODALITY",), dicomweb_port=free_port()
    ):
        audit = AuditLog.for_settings(running.settings)
        intake = Intake(
            running.settings, running.joblog.intake, Metrics(), lambda o, k: None, audit
        )
        server = StowServer(intake, stow_accepted(), audit)
        server.start()
        try:
            yield running, f"http://127.0.0.1:{running.settings.dicomweb_port}/dicom-web"
        finally:
            server.stop()
            audit.close()


@pytest.mark.parametrize("first_by", ["c-store", "stow-rs"])
def test_both_protocols_refuse_another_patient_in_either_order(
    stow_and_scp: tuple[RunningScp, str], first_by: str
) -> None:
    from dicomweb_client.api import DICOMwebClient

    scp, url = stow_and_scp
    client = DICOMwebClient(url)
    client.set_http_retry_params(retry=False)
    a = _patient_a()
    b = _of_patient(a, PATIENT_B)
    if first_by == "c-store":
        assert send(scp, a) == 0x0000
        with pytest.raises(requests.HTTPError) as raised:
            client.store_instances([b])
        assert raised.value.response.status_code == 409
        [failed] = Dataset.from_json(raised.value.response.json()).FailedSOPSequence
        assert failed.FailureReason == DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    else:
        client.store_instances([a])
        assert send(scp, b) == 0xA900
    rows = [r for r in scp.joblog.admin.job_rows() if r.state != "rejected"]
    assert len(rows) == 1 and rows[0].instances == 1  # never one job over two patients

"""Result delivery over real associations: statuses, retries with backoff, dead letters."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicom_node.admin.metrics import Metrics
from dicom_node.config import DicomWebAddress, PacsAddress, Settings
from dicom_node.delivery.sender import ResultSender
from dicom_node.domain import ModelInfo, OutputContext
from dicom_node.intake.filing import Intake
from dicom_node.intake.scp import stow_accepted
from dicom_node.intake.stow_server import StowServer
from dicom_node.joblog import JobLog
from dicom_node.joblog.records import InstanceRecord
from dicom_node.joblog.schema import JobState, utcnow
from dicom_node.outputs.xray import build_xray_outputs
from dicom_node.worker import Worker
from tests.support.factories import small_cr, synthetic_xray_finding
from tests.support.net import free_port

MODEL = ModelInfo("test_model", "0.0.1", ("covid", "normal", "pneumonia_bac"))


class FakePacsScp:
    """A real pynetdicom Storage SCP that answers with ``status`` and keeps what it got."""

    def __init__(self, port: int, status: int = 0x0000) -> None:
        self.port = port
        self.status = status
        self.received: list[Dataset] = []
        self.calling_aes: list[str] = []
        self._server = None

    def start(self) -> None:
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts

        def handle(event: evt.Event) -> int:
            self.received.append(event.dataset)
            self.calling_aes.append(event.assoc.requestor.ae_title)
            return self.status

        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)]
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


@pytest.fixture
def pacs_port() -> int:
    return free_port()


@pytest.fixture
def pacs(pacs_port: int) -> Iterator[FakePacsScp]:
    server = FakePacsScp(pacs_port)
    server.start()
    yield server
    server.stop()


def _sending_job(
    tmp_path: Path, pacs_port: int, **overrides: object
) -> tuple[Settings, JobLog, int]:
    """A job that has been processed and waits for delivery of a real SR and SC."""
    values: dict[str, object] = {
        "fsync": False,
        "send_backoff_seconds": 0.05,
        "send_max_attempts": 3,
        "pacs": PacsAddress("PACS", "127.0.0.1", pacs_port),
        **overrides,
    }
    settings = Settings(data_dir=tmp_path / "data", **values)  # type: ignore[arg-type]
    joblog = JobLog.open(settings.database_path)
    source = small_cr()
    outcome = joblog.intake.record_instance(
        InstanceRecord(
            str(source.StudyInstanceUID),
            str(source.SeriesInstanceUID),
            str(source.SOPInstanceUID),
            str(source.SOPClassUID),
            "1.2.840.10008.1.2.1",
            "CR",
            "CHEST",
            None,
            None,
            None,
            "MODALITY",
            "/nonexistent",
            0,
        )
    )
    [instance] = joblog.assembly.study_instances(outcome.job_id)
    assert joblog.assembly.complete_job(outcome.job_id, "xray", [instance.id], None, utcnow())
    job = joblog.queue.claim_next("w1", 60.0)
    assert job is not None
    outputs = build_xray_outputs(synthetic_xray_finding(source), [source], OutputContext(), MODEL)
    worker = Worker(settings, joblog.queue, None, Metrics(), lambda: None)  # type: ignore[arg-type]
    written = [worker._write_output(str(source.StudyInstanceUID), ds) for ds in outputs]
    joblog.queue.processed(job.id, MODEL.name, MODEL.version, "{}", written, str(settings.pacs))
    return settings, joblog, job.id


def _drain(sender: ResultSender, joblog: JobLog, job_id: int, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sender.send_due()
        job = joblog.admin.job(job_id)
        assert job is not None
        if job.state != JobState.SENDING:
            return job.state
        time.sleep(0.02)
    raise AssertionError("job still sending")


def test_results_are_delivered_with_our_ae_title(
    tmp_path: Path, pacs: FakePacsScp, pacs_port: int
) -> None:
    settings, joblog, job_id = _sending_job(tmp_path, pacs_port)
    metrics = Metrics()
    sender = ResultSender(settings, joblog.deliveries, metrics)
    assert _drain(sender, joblog, job_id) == JobState.DONE
    assert sorted(ds.Modality for ds in pacs.received) == ["OT", "SR"]
    assert set(pacs.calling_aes) == {"AINODE"}
    assert (
        metrics.registry.get_sample_value(
            "dicom_node_turnaround_seconds_count", {"pipeline": "xray"}
        )
        == 1
    )


def test_warning_status_counts_as_delivered(
    tmp_path: Path, pacs: FakePacsScp, pacs_port: int
) -> None:
    pacs.status = 0xB000  # Coercion of data elements: stored with changes
    settings, joblog, job_id = _sending_job(tmp_path, pacs_port)
    assert (
        _drain(ResultSender(settings, joblog.deliveries, Metrics()), joblog, job_id)
        == JobState.DONE
    )


def test_failure_status_retries_then_dead_letters(
    tmp_path: Path, pacs: FakePacsScp, pacs_port: int
) -> None:
    pacs.status = 0xA700
    settings, joblog, job_id = _sending_job(tmp_path, pacs_port)
    assert (
        _drain(ResultSender(settings, joblog.deliveries, Metrics()), joblog, job_id)
        == JobState.DEAD
    )
    job = joblog.admin.job(job_id)
    assert job is not None and "0xA700" in (job.error or "")
    assert len(pacs.received) == 2 * settings.send_max_attempts
    # An admin requeue re-runs the job (deterministic UIDs: no duplicates at the PACS).
    assert joblog.admin.requeue() == [job_id]


def test_pacs_down_then_up_delivers(tmp_path: Path, pacs_port: int) -> None:
    settings, joblog, job_id = _sending_job(tmp_path, pacs_port, send_max_attempts=50)
    sender = ResultSender(settings, joblog.deliveries, Metrics())
    assert sender.send_due()  # attempt 1: connection refused
    delivery = joblog.deliveries.due()
    job = joblog.admin.job(job_id)
    assert (
        job is not None and job.state == JobState.SENDING and delivery == []
    )  # waiting for backoff
    pacs = FakePacsScp(pacs_port)
    pacs.start()
    try:
        assert _drain(sender, joblog, job_id) == JobState.DONE
        assert len(pacs.received) == 2
    finally:
        pacs.stop()


def test_backoff_doubles_up_to_the_cap(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, send_backoff_seconds=2, send_backoff_max_seconds=10)
    sender = ResultSender(settings, None, Metrics())  # type: ignore[arg-type]
    assert [sender.backoff(n) for n in range(1, 6)] == [2, 4, 8, 10, 10]


def test_stow_rs_failure_reasons_are_retried_then_dead_lettered(tmp_path: Path) -> None:
    # The node's own STOW-RS intake as the receiver: a real STOW-RS server that refuses SR and
    # SC (not analysed), answering 409 with Failure Reason 0x0122 for each instance.
    receiver = Settings(
        data_dir=tmp_path / "receiver", dicomweb_port=free_port(), min_free_disk_mb=0
    )
    receiver_log = JobLog.open(receiver.database_path)
    (receiver.data_dir / "quarantine").mkdir(parents=True, exist_ok=True)
    intake = Intake(receiver, receiver_log.intake, Metrics(), lambda _o, _k: None)
    server = StowServer(intake, stow_accepted())
    server.start()
    try:
        url = f"dicomweb+http://127.0.0.1:{server.port}/dicom-web"
        settings, joblog, job_id = _sending_job(
            tmp_path, 0, pacs=DicomWebAddress.parse(url), send_max_attempts=2
        )
        assert _drain(ResultSender(settings, joblog.deliveries, Metrics()), joblog, job_id) == (
            JobState.DEAD
        )
        job = joblog.admin.job(job_id)
        assert job is not None and "Failure Reason 0x0122" in (job.error or "")
        refused = [row for row in receiver_log.admin.job_rows() if row.state == "rejected"]
        assert len(refused) == 2 * settings.send_max_attempts  # SR and SC, each attempt
    finally:
        server.stop()
        receiver_log.close()


def test_stow_rs_server_down_is_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Delivery once the server is up: tests/integration/test_dicomweb.py, with Orthanc.
    port = free_port()
    settings, joblog, job_id = _sending_job(
        tmp_path,
        0,
        pacs=DicomWebAddress.parse(f"dicomweb+http://127.0.0.1:{port}/dicom-web"),
        send_max_attempts=50,
    )
    sender = ResultSender(settings, joblog.deliveries, Metrics())
    assert sender.send_due()  # attempt 1: connection refused
    job = joblog.admin.job(job_id)
    assert job is not None and job.state == JobState.SENDING
    assert joblog.deliveries.due() == []  # waiting for its backoff
    assert caplog.text.count("STOW-RS request failed (ConnectionError)") == 2  # SR and SC

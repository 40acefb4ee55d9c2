"""The Storage SCP over real associations on loopback (pynetdicom as the sending modality)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    MRImageStorage,
    Verification,
)

from tests.support.dicom_client import rejection_left_unread
from tests.support.factories import small_cr
from tests.support.scp import RunningScp, echo, send, start_scp_in_process


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[RunningScp]:
    yield from start_scp_in_process(tmp_path, allowed_aes=("MODALITY",))


def test_store_writes_the_bytes_and_records_the_instance(scp: RunningScp) -> None:
    dataset = small_cr()
    assert send(scp, dataset) == 0x0000
    [instance] = scp.joblog.assembly.study_instances(scp.armed[0].job_id)
    stored = pydicom.dcmread(instance.path)
    assert stored.SOPInstanceUID == dataset.SOPInstanceUID
    assert stored.PixelData == dataset.PixelData
    assert instance.modality == "CR" and instance.body_part == "CHEST"
    assert instance.calling_ae == "MODALITY"
    assert not list(Path(instance.path).parent.glob(".tmp-*"))  # atomic: no leftovers


def test_instances_of_one_study_share_a_job_and_rearm_the_timer(scp: RunningScp) -> None:
    first = small_cr()
    second = small_cr()
    second.StudyInstanceUID = first.StudyInstanceUID
    assert send(scp, first) == send(scp, second) == 0x0000
    assert [o.job_id for o in scp.armed] == [scp.armed[0].job_id] * 2
    assert scp.joblog.admin.job(scp.armed[0].job_id).instances == 2  # type: ignore[union-attr]


def test_resent_instance_replaces_the_file_without_a_new_job(scp: RunningScp) -> None:
    dataset = small_cr()
    assert send(scp, dataset) == send(scp, dataset) == 0x0000
    assert scp.armed[1].duplicate
    assert len(scp.joblog.assembly.study_instances(scp.armed[0].job_id)) == 1


def test_unknown_calling_ae_is_refused_at_association(scp: RunningScp) -> None:
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.settings.port, ae_title=scp.settings.ae_title)
    rejection_left_unread(assoc)
    assert assoc.is_rejected
    assert echo(scp) == 0x0000  # still serving


def test_wrong_called_ae_is_refused(scp: RunningScp) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.settings.port, ae_title="SOMEONEELSE")
    rejection_left_unread(assoc)
    assert assoc.is_rejected


def test_unsupported_sop_class_is_not_negotiated(scp: RunningScp) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.settings.port, ae_title=scp.settings.ae_title)
    assert assoc.is_established
    assert [c.abstract_syntax for c in assoc.accepted_contexts] == [Verification]
    assert [c.abstract_syntax for c in assoc.rejected_contexts] == [MRImageStorage]
    assoc.release()


@pytest.mark.parametrize(
    ("damage", "status", "reason"),
    [
        (lambda ds: delattr(ds, "StudyInstanceUID"), 0xA900, "StudyInstanceUID is missing"),
        (lambda ds: setattr(ds, "SeriesInstanceUID", "1.2.abc"), 0xA900, "not a valid UID"),
        (lambda ds: delattr(ds, "PixelData"), 0xA900, "Pixel Data (7FE0,0010) is missing"),
        (
            lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2]),
            0xC000,
            "Pixel Data truncated",
        ),
    ],
)
def test_bad_datasets_get_a_failure_status_a_log_entry_and_are_kept(
    scp: RunningScp, damage: object, status: int, reason: str
) -> None:
    dataset = small_cr()
    damage(dataset)  # type: ignore[operator]
    assert send(scp, dataset) == status
    [row] = scp.joblog.admin.job_rows()
    assert row.state == "rejected"
    assert reason in (row.error or "")
    assert scp.armed == []
    quarantined = list(scp.settings.quarantine_dir.glob("*.dcm"))
    assert len(quarantined) == 1  # nothing is lost: the bytes are kept for inspection
    assert echo(scp) == 0x0000  # the node keeps serving


def test_full_disk_is_refused_with_out_of_resources(tmp_path: Path) -> None:
    for scp in start_scp_in_process(tmp_path, min_free_disk_mb=10**9):
        assert send(scp, small_cr()) == 0xA700
        [row] = scp.joblog.admin.job_rows()
        assert "free disk space" in (row.error or "")


def test_metrics_count_received_and_rejected(scp: RunningScp) -> None:
    send(scp, small_cr())
    bad = small_cr()
    del bad.PixelData
    send(scp, bad)
    received = scp.metrics.registry.get_sample_value(
        "dicom_node_received_instances_total", {"modality": "CR"}
    )
    rejected = scp.metrics.registry.get_sample_value(
        "dicom_node_rejected_instances_total", {"reason": "invalid_dataset"}
    )
    assert received == 1 and rejected == 1


def test_computed_radiography_context_accepts_compressed_syntaxes(scp: RunningScp) -> None:
    from pydicom.uid import JPEG2000Lossless

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ComputedRadiographyImageStorage, [JPEG2000Lossless])
    assoc = ae.associate("127.0.0.1", scp.settings.port, ae_title=scp.settings.ae_title)
    assert [c.transfer_syntax[0] for c in assoc.accepted_contexts] == [JPEG2000Lossless]
    assoc.release()


def test_shutdown_waits_for_connection_threads_so_none_logs_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection thread ending its association after the server stopped used to log (and
    write the job log) once the test, or the node, had closed both.  The end of each
    association is slowed here so that the race is always lost without the wait."""
    import threading
    import time

    from dicom_node.intake.admission import Gate

    detach = Gate.detach
    ended: list[str] = []

    def slow_detach(self: Gate, assoc: object) -> None:
        time.sleep(0.5)
        detach(self, assoc)  # type: ignore[arg-type]
        ended.append(threading.current_thread().name)

    monkeypatch.setattr(Gate, "detach", slow_detach)
    running = start_scp_in_process(tmp_path)
    scp = next(running)
    assert echo(scp) == 0x0000
    next(running, None)  # the fixture's shutdown
    assert len(ended) == 1  # the association's last words came before shutdown returned
    left = [t.name for t in threading.enumerate() if "process_request_thread" in t.name]
    assert left == []


def _send_part_of_a_store(assoc: Any, dataset: pydicom.Dataset, fragments: int) -> None:
    """The C-STORE-RQ command and the first ``fragments`` P-DATA of its data set, no more:
    a modality cut off mid-transfer."""
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = dataset.SOPClassUID
    request.AffectedSOPInstanceUID = dataset.SOPInstanceUID
    request.Priority = 2
    request.DataSet = BytesIO(encode(dataset, True, True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    context_id = assoc.accepted_contexts[0].context_id
    for _, pdata in zip(range(fragments + 1), message.encode_msg(context_id, 16_000), strict=False):
        assoc.dul.send_pdu(pdata)


@pytest.mark.parametrize("end", ["abort", "drop"])
def test_a_transfer_cut_off_leaves_no_received_data_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    running = start_scp_in_process(tmp_path)
    scp = next(running)
    try:
        dataset = small_cr(512, 512)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ComputedRadiographyImageStorage, ImplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", scp.settings.port, ae_title=scp.settings.ae_title)
        assert assoc.is_established
        _send_part_of_a_store(assoc, dataset, fragments=4)
        receiving = scp.settings.data_dir.glob(".tmp-dimse-*.part")
        deadline = time.monotonic() + 20
        while not (partial := list(receiving)) and time.monotonic() < deadline:
            time.sleep(0.05)
            receiving = scp.settings.data_dir.glob(".tmp-dimse-*.part")
        # Received data is written in the node's data directory, never the system's.
        assert len(partial) == 1 and list(system_tmp.iterdir()) == []
        if end == "abort":
            assoc.abort()
        else:  # the modality's connection drops without an A-ABORT
            assoc.dul.socket.close()
            assoc.kill()
        while partial[0].exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not partial[0].exists()
        assert list(system_tmp.iterdir()) == []
        assert scp.joblog.intake.filed_paths() == set() and scp.armed == []
        assert echo(scp) == 0x0000  # the node keeps serving
    finally:
        next(running, None)


def test_metric_labels_are_bounded_whatever_modality_the_data_sets_carry(
    scp: RunningScp,
) -> None:
    for index in range(40):
        dataset = small_cr()
        dataset.Modality = f"Z{index:02d}"
        send(scp, dataset)
    send(scp, small_cr())
    exposed = {
        sample.labels["modality"]: sample.value
        for family in scp.metrics.registry.collect()
        if family.name == "dicom_node_received_instances"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert exposed == {"other": 40, "CR": 1}

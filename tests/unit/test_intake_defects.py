"""Regression tests for the C-STORE defects an adversarial run found (issue 9), over real
associations on loopback with pynetdicom as the sending modality."""

from __future__ import annotations

import io
import logging
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.support.dicom_client import StoreSession
from tests.support.factories import small_cr
from tests.support.mutations import dataset_item
from tests.support.scp import RunningScp, echo, send, start_scp_in_process


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[RunningScp]:
    yield from start_scp_in_process(tmp_path, allowed_aes=("MODALITY",))


def _rejection(scp: RunningScp) -> str:
    [row] = [r for r in scp.joblog.admin.job_rows() if r.state == "rejected"]
    return row.error or ""


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def test_a_header_that_cannot_be_parsed_is_refused_with_cannot_understand(
    tmp_path: Path,
) -> None:
    """A sequence item that claims more bytes than the file holds (pydicom raises OSError)."""
    from dicom_node.errors import InstanceRejected
    from dicom_node.intake.filing import _read_header

    buffer = io.BytesIO()
    small_cr().save_as(buffer, enforce_file_format=True)
    # (0040,0275) SQ, undefined length; an item of 4000 bytes of which only 8 follow.
    broken = b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xa0\x0f\x00\x00"
    path = tmp_path / "broken.dcm"
    data = buffer.getvalue()
    pixel_tag = data.rindex(b"\xe0\x7f\x10\x00")
    path.write_bytes(data[:pixel_tag] + broken + b"\x08\x00\x16\x00UI\x02\x001\x00")
    with pytest.raises(InstanceRejected) as refused:
        _read_header(path, max_instance_mb=1024)
    assert refused.value.status == 0xC000
    assert "header cannot be parsed" in refused.value.reason


def test_a_sop_instance_uid_of_one_study_is_not_taken_over_by_another(scp: RunningScp) -> None:
    first = small_cr()
    assert send(scp, first) == 0x0000
    impostor = small_cr()  # another study (another patient) reusing the instance UID
    impostor.SOPInstanceUID = first.SOPInstanceUID
    impostor.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    impostor.PatientName = "Other^Patient"
    assert send(scp, impostor) == 0xA900
    assert "already filed in another study" in _rejection(scp)
    [instance] = scp.joblog.assembly.study_instances(scp.armed[0].job_id)
    stored = pydicom.dcmread(instance.path)
    assert stored.StudyInstanceUID == first.StudyInstanceUID
    assert instance.path.count(str(first.StudyInstanceUID)) == 1
    # The impostor's bytes are kept in quarantine, none of them in the inbox.
    inbox = _files(scp.settings.inbox_dir)
    assert [p.name for p in inbox] == [f"{first.SOPInstanceUID}.dcm"]
    assert len(_files(scp.settings.quarantine_dir)) == 1
    assert len(scp.armed) == 1


def test_empty_pixel_data_is_refused_with_its_reason(scp: RunningScp) -> None:
    dataset = small_cr()
    dataset.PixelData = b""
    assert send(scp, dataset) == 0xA900
    assert "Pixel Data (7FE0,0010) is empty" in _rejection(scp)


def test_group_0002_inside_the_data_set_is_refused(scp: RunningScp) -> None:
    dataset = small_cr()
    dataset.add(DataElement(Tag(0x0002, 0x0010), "UI", "1.2.840.10008.1.2.4.50"))
    assert send(scp, dataset) == 0xA900
    assert "group 0002" in _rejection(scp)


def test_instances_over_the_size_limit_are_refused(tmp_path: Path) -> None:
    for scp in start_scp_in_process(tmp_path, max_instance_mb=1):
        big = small_cr(rows=1024, columns=1024)  # 2 MiB of pixels
        assert send(scp, big) == 0xA700
        assert "exceeds max_instance_mb=1" in _rejection(scp)
        assert send(scp, small_cr()) == 0x0000
        assert _files(scp.settings.quarantine_dir) == []  # out of resources: not kept


def test_pixels_that_would_decode_too_large_are_refused_before_decoding(tmp_path: Path) -> None:
    for scp in start_scp_in_process(tmp_path, max_decoded_mb=1):
        dataset = small_cr()
        dataset.Rows = dataset.Columns = 4096  # declares 32 MiB of pixels
        assert send(scp, dataset) == 0xA700
        assert "would decode to 32 MiB" in _rejection(scp)


def test_an_overlong_uid_is_refused_and_recorded(scp: RunningScp) -> None:
    broken = small_cr()
    broken.StudyInstanceUID = "1.2." + "9" * 70  # longer than a UID may be
    assert send(scp, broken) == 0xA900
    assert "StudyInstanceUID is not a valid UID" in _rejection(scp)
    assert echo(scp) == 0x0000


def test_a_locked_job_log_is_answered_promptly_and_leaves_no_orphan(scp: RunningScp) -> None:
    holder = sqlite3.connect(scp.settings.database_path, timeout=1, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        status = send(scp, small_cr())
        elapsed = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert status == 0xA700
    assert elapsed < 15  # two short lock waits, not a minute per instance
    assert _files(scp.settings.inbox_dir) == []  # no orphan: the sender will resend
    assert send(scp, small_cr()) == 0x0000  # and after the lock, stores succeed again


def test_values_from_the_data_set_cannot_forge_log_lines(
    scp: RunningScp, caplog: pytest.LogCaptureFixture
) -> None:
    from dicom_node.logs import OneLineFilter

    caplog.handler.addFilter(OneLineFilter())
    dataset = small_cr()
    dataset.Modality = "CR\nFORGED LINE"
    caplog.set_level(logging.INFO, logger="dicom_node")
    assert send(scp, dataset) == 0x0000
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("dicom_node"))
    assert "\nFORGED" not in text and "FORGED" not in [line[:6] for line in text.splitlines()]


def test_a_resent_instance_of_the_same_study_still_replaces_its_file(scp: RunningScp) -> None:
    dataset = small_cr()
    assert send(scp, dataset) == 0x0000
    dataset.SeriesDescription = "resent"
    assert send(scp, dataset) == 0x0000
    [instance] = scp.joblog.assembly.study_instances(scp.armed[0].job_id)
    assert pydicom.dcmread(instance.path).SeriesDescription == "resent"


def test_refusals_of_any_data_set_are_recorded(scp: RunningScp) -> None:
    """The refusal path itself survives garbage: raw bytes that are no data set at all."""
    ae = AE(ae_title="MODALITY")
    dataset = small_cr()
    ae.add_requested_context(dataset.SOPClassUID)
    assoc = ae.associate("127.0.0.1", scp.settings.port, ae_title=scp.settings.ae_title)
    assert assoc.is_established
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    junk = Dataset()
    junk.file_meta = dataset.file_meta
    junk.SOPClassUID = dataset.SOPClassUID
    junk.SOPInstanceUID = generate_uid()
    junk.file_meta.MediaStorageSOPInstanceUID = junk.SOPInstanceUID
    status = assoc.send_c_store(junk)
    assoc.release()
    assert int(status.Status) == 0xA900  # no UIDs to file it under, no pixels
    assert "is missing" in _rejection(scp)


def test_quarantine_keeps_every_refusal_of_the_same_uid(scp: RunningScp) -> None:
    dataset = small_cr()
    del dataset.PixelData
    assert send(scp, dataset) == send(scp, dataset) == 0xA900
    assert len(_files(scp.settings.quarantine_dir)) == 2


def test_inbox_files_without_a_row_are_recorded_again_at_start(tmp_path: Path) -> None:
    """After a power loss the last job-log commits can be gone while the fsynced files are
    there: start-up reconciliation restores their rows (and only theirs)."""
    from dicom_node.config import Settings
    from dicom_node.intake.filing import refile_unrecorded
    from dicom_node.joblog import JobLog
    from dicom_node.storage import inbox_path

    settings = Settings(data_dir=tmp_path)
    joblog = JobLog.open(settings.database_path)
    kept, lost = small_cr(), small_cr()  # two studies
    for ds in (kept, lost):
        path = inbox_path(
            settings.inbox_dir, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    assert refile_unrecorded(settings, joblog.intake) == 2
    assert refile_unrecorded(settings, joblog.intake) == 0  # nothing twice
    assert len(joblog.intake.filed_paths()) == 2
    assert sorted(r.state for r in joblog.admin.job_rows()) == ["received", "received"]
    joblog.close()


def test_a_patient_id_in_the_request_uid_reaches_no_log_line_nor_traceback(
    scp: RunningScp, caplog: pytest.LogCaptureFixture
) -> None:
    from dicom_node.logs import LibraryRecordFilter, OneLineFilter

    caplog.handler.addFilter(LibraryRecordFilter())
    caplog.handler.addFilter(OneLineFilter())
    caplog.set_level(logging.INFO, logger="dicom_node")
    caplog.set_level(logging.WARNING, logger="pynetdicom")
    planted = "ZQXID00042"
    item = replace(dataset_item(small_cr()), affected_sop_instance=planted)
    with StoreSession("127.0.0.1", scp.settings.port, calling_ae="MODALITY") as session:
        session.store(item)
    assert echo(scp) == 0x0000  # the node keeps serving
    library = [r for r in caplog.records if r.name.startswith("pynetdicom")]
    assert any("<not a UID, 10 chars>" in r.getMessage() for r in library), library
    # pydicom's own logger is silenced by configure_logging (it quotes values by design).
    ours = [r for r in caplog.records if r.name.startswith(("dicom_node", "pynetdicom"))]
    logged = "\n".join(caplog.handler.format(r) for r in ours)
    assert planted not in logged and "Traceback" not in logged, logged


def test_library_tracebacks_become_the_exception_type_and_quoted_values_their_length() -> None:
    from dicom_node.logs import LibraryRecordFilter

    try:
        raise ValueError("Invalid 'Affected SOP Instance UID' value 'ZQXID00042'")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "pynetdicom.dimse",
        logging.ERROR,
        __file__,
        1,
        "Received an invalid DIMSE message",
        None,
        exc_info,
    )
    assert LibraryRecordFilter().filter(record)
    assert logging.Formatter().format(record) == ("Received an invalid DIMSE message (ValueError)")
    warning = logging.LogRecord(
        "pynetdicom.utils",
        logging.WARNING,
        __file__,
        1,
        "Non-conformant 'Affected SOP Instance UID' value '%s' (UID %s)",
        ("ZQXID00042", "1.2.3"),
        None,
    )
    LibraryRecordFilter().filter(warning)
    assert warning.getMessage() == (
        "Non-conformant 'Affected SOP Instance UID' value '<not a UID, 10 chars>' (UID 1.2.3)"
    )

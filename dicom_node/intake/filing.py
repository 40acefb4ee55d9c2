"""The C-STORE handler (and STOW-RS's, ``file_part10``): check a received data set, file it
durably, record it, answer.

pynetdicom writes each received data set to a temporary file as it arrives (chunked
receive: memory stays flat whatever the instance size); the handler reads only the header
(large values are deferred, pixels are never decoded here), checks what filing and the
pipelines rely on, moves the file into the inbox, records the instance in the job log, arms
the study's quiet timer and answers.  Anything refused is recorded as ``rejected`` with its
status and reason, and its bytes are kept in ``quarantine/`` unless the disk is the problem.
Models run elsewhere (``worker``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.admin.metrics import Metrics, modality_label
from dicom_node.errors import DicomStatus, InstanceRejected
from dicom_node.intake import codestream, pynetdicom_adapter
from dicom_node.intake.inflate import InflateError, InflateLimitExceeded, read_part10
from dicom_node.joblog import IntakeLog
from dicom_node.joblog.records import InstanceRecord, RecordOutcome
from dicom_node.logs import clean, loggable_uid
from dicom_node.routing import header_info
from dicom_node.storage import adopt_file, free_disk_mb, inbox_path, is_safe_uid

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# Values longer than this stay on disk while the header is read (Pixel Data above all).
DEFER_BYTES = 64 * 1024
_INVALID = DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS


class InstanceAudit(Protocol):
    """Where each C-STORE outcome is reported for the audit trail (``audit.AuditLog``)."""

    def instance(
        self, assoc: Any, study_uid: str | None, sop_uid: str | None, status: int
    ) -> None: ...


class IntakeSettings(Protocol):
    """What filing and the STOW-RS server read of the configuration (``config.Settings``)."""

    @property
    def data_dir(self) -> Path: ...
    @property
    def inbox_dir(self) -> Path: ...
    @property
    def quarantine_dir(self) -> Path: ...
    @property
    def fsync(self) -> bool: ...
    @property
    def max_instance_mb(self) -> int: ...
    @property
    def max_decoded_mb(self) -> int: ...
    @property
    def min_free_disk_mb(self) -> int: ...
    @property
    def maximum_associations(self) -> int: ...
    @property
    def network_timeout_seconds(self) -> float: ...
    @property
    def dicomweb_host(self) -> str: ...
    @property
    def dicomweb_port(self) -> int | None: ...
    @property
    def stow_max_parts_per_request(self) -> int: ...


@dataclass
class Intake:
    """What the C-STORE handler needs, bound once at start."""

    settings: IntakeSettings
    joblog: IntakeLog
    metrics: Metrics
    # A gathering job's instance was filed, from the association with this key (``id``).
    on_instance: Callable[[RecordOutcome, int], None]
    audit: InstanceAudit | None = None
    # An association closed: (its key, released by the peer); aborts and drops are False.
    on_association_end: Callable[[int, bool], None] | None = None


@dataclass
class _Received:
    """One instance being filed: where its bytes are and what we learned so far."""

    path: Path  # the receiver's temporary file until filed
    calling_ae: str
    sop_uid: str  # what the sender said it sends (C-STORE request or Part 10 file meta)
    sop_class: str
    transfer_syntax: str  # negotiated (DIMSE) or declared in the file meta (STOW-RS)
    peer: Any  # the association or the HTTP request: the audit trail's and assembly's key
    # C-STORE: pynetdicom wrote the file meta, so any other group 0002 element was sent inside
    # the data set.  STOW-RS: the sender's own Part 10 file; only group 0002 in the body counts.
    receiver_wrote_meta: bool = True
    expected_study_uid: str | None = None  # STOW-RS ``/studies/{uid}``: the target study
    study_uid: str | None = None
    size_bytes: int = 0
    # False: a refusal is counted (metrics, audit trail) but neither quarantined, recorded nor
    # logged; the caller summarises it (STOW-RS, past the first refusals of a request).
    record_refusal: bool = True


@dataclass(frozen=True)
class FilingOutcome:
    """What happened to one instance: its status and, when refused, why."""

    status: int
    reason: str | None = None
    # The job log could not be written (locked, unreachable): the next write would wait its
    # busy timeout and most likely fail too.
    joblog_unavailable: bool = False


class JobLogUnavailable(InstanceRejected):
    """The job log is locked or unreachable: ``0xA700`` (the sender may retry later).  The
    refusal is not recorded either: that write would wait the busy timeout a second time."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(DicomStatus.OUT_OF_RESOURCES, f"the job log is unavailable ({_kind(exc)})")


# Stands in for an empty UID in the temporary file's meta, so that the handler runs and refuses
# the request with a status (pynetdicom would otherwise end the association's thread).
_PLACEHOLDER_UID = "0.0"


def receive_to_files() -> None:
    """Make pynetdicom write each received data set to a temporary file as it arrives.

    Memory then stays flat whatever the instance size.  pynetdicom 3.0 cannot write that
    file's meta for a request with an empty Affected SOP Instance/Class UID and ends the
    association's thread with an exception: the meta gets a placeholder instead, and the
    handler refuses such a request (its checks read the request's own UIDs).
    """
    pynetdicom_adapter.enable_chunked_receive()
    pynetdicom_adapter.tolerate_empty_meta_uids(_PLACEHOLDER_UID)


class NodeAssociation(pynetdicom_adapter.InterceptingAssociation):
    """pynetdicom's association, answering a C-STORE request that lacks a required parameter,
    and waiting for DIMSE messages instead of polling for them.

    pynetdicom drops such a request without a word (the sender waits for its DIMSE timeout)
    and leaves its temporary file behind.  Here it gets a ``0xA900`` response, the file is
    removed, and the refusal is recorded like any other.

    pynetdicom's acceptor loop sleeps 1 ms and then asks for a message without waiting: 1000
    wake-ups a second per association, taking the GIL from the associations that receive.
    Here the loop's own non-blocking ask waits up to ``REACTOR_WAIT_SECONDS`` on the message
    queue, so a message is served as it arrives and an idle association wakes about 50 times
    a second (release, abort and the network timeout are checked as often).
    """

    REACTOR_WAIT_SECONDS = 0.02

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pynetdicom_adapter.wait_for_dimse_messages(self, self.REACTOR_WAIT_SECONDS)

    def intercept_request(self, msg: Any, context_id: int) -> bool:
        if isinstance(msg, C_STORE) and not msg.is_valid_request and msg.MessageID is not None:
            self._refuse_invalid_store(msg, context_id)
            return True
        return False

    def association_ended(self) -> None:
        # A data set cut off by an abort or a dropped connection, or received but never served,
        # would otherwise stay on disk with the patient's data in it.
        removed = 0
        for path in pynetdicom_adapter.unfinished_files(self):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
        if removed:
            log.info("removed %d unfinished received data set(s) of an ended association", removed)

    def _refuse_invalid_store(self, msg: C_STORE, context_id: int) -> None:
        reason = "C-STORE request without an Affected SOP Instance UID or SOP Class UID"
        leftover = pynetdicom_adapter.received_file(msg)
        if leftover is not None:
            leftover.unlink(missing_ok=True)
        response = C_STORE()
        response.MessageIDBeingRespondedTo = msg.MessageID
        response.Status = int(_INVALID)
        self.dimse.send_msg(response, context_id)
        handler = self.get_handlers(evt.EVT_C_STORE)
        intake = handler[1][0] if isinstance(handler, tuple) and handler[1] else None
        calling_ae = clean(str(self.requestor.ae_title).strip(), 16)
        log.warning("refused a request from %s: %s (status 0x%04X)", calling_ae, reason, _INVALID)
        if isinstance(intake, Intake):
            try:
                intake.joblog.record_rejection(calling_ae, _INVALID, reason)
            except SQLAlchemyError as exc:
                log.error("could not record a refusal in the job log: %s", _kind(exc))
            intake.metrics.rejected.labels(reason=_reason_label(_INVALID)).inc()
            if intake.audit is not None:
                intake.audit.instance(self, None, None, int(_INVALID))


def handle_store(event: evt.Event, intake: Intake) -> int:
    """File one C-STORE request; returns its status (pynetdicom sends it as the response).

    Statuses:

    * ``0x0000`` Success: the bytes are durable in the inbox (fsynced unless ``fsync`` is
      off) and the instance is in the job log; a resent instance of the same study replaces
      its file without starting another analysis.
    * ``0xA700`` Out of Resources: free disk space is below ``min_free_disk_mb``; the instance
      is larger than ``max_instance_mb`` (a deflated one once inflated) or its pixels would
      decode to more than ``max_decoded_mb``; writing failed; or the job log is unavailable
      (locked): the sender may retry later.
    * ``0xA900`` Data Set Does Not Match SOP Class: a UID that filing needs is missing or
      invalid; the SOP Instance UID differs from the request's or is already filed in another
      study (a UID names one instance of one study: a second study never takes it over);
      the patient (PatientID and its issuer) differs from the study's earlier instances;
      group 0002 (File Meta) elements inside the data set; Pixel Data missing or empty; an
      incomplete image pixel description; a compressed frame whose own header (JPEG SOF,
      JPEG 2000 SIZ, RLE segments) disagrees with it (``codestream``).
    * ``0xC000`` Cannot Understand: the header cannot be parsed (the step is named), native
      Pixel Data is shorter than declared, encapsulated Pixel Data or a deflate stream cannot
      be read, or an unexpected error (the association goes on).

    Never raises: an exception here would become pynetdicom's 0xC211 with nothing recorded.
    """
    received = _Received(
        path=Path(event.dataset_path),
        calling_ae=_calling_ae(event),
        sop_uid=str(getattr(event.request, "AffectedSOPInstanceUID", "") or ""),
        sop_class=str(getattr(event.request, "AffectedSOPClassUID", "") or ""),
        transfer_syntax=str(event.context.transfer_syntax),
        peer=event.assoc,
    )
    return file_received(received, intake).status


@dataclass(frozen=True)
class Accepted:
    """What a receiver that does not negotiate (STOW-RS) takes: SOP Classes, Transfer Syntaxes."""

    sop_classes: frozenset[str]
    transfer_syntaxes: frozenset[str]


def file_part10(
    path: Path,
    intake: Intake,
    calling_ae: str,
    peer: Any,
    accepted: Accepted,
    expected_study_uid: str | None = None,
    record_refusal: bool = True,
) -> FilingOutcome:
    """File one DICOM Part 10 file received by another protocol (STOW-RS): the same checks,
    statuses, job-log rows and quarantine as a C-STORE; ``path`` is moved to the inbox or to
    quarantine (or left for the caller to remove when the disk is the problem, or when
    ``record_refusal`` is False: the refusal is then only counted, see ``_Received``)."""
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        sop_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
        sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
        transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "")
    except Exception:  # not a Part 10 file: refused below with the whole-header check
        sop_uid = sop_class = transfer_syntax = ""
    received = _Received(
        path=path,
        calling_ae=calling_ae,
        sop_uid=sop_uid,
        sop_class=sop_class,
        transfer_syntax=transfer_syntax,
        peer=peer,
        receiver_wrote_meta=False,
        expected_study_uid=expected_study_uid,
        record_refusal=record_refusal,
    )
    if not transfer_syntax:
        refusal = InstanceRejected(
            DicomStatus.CANNOT_UNDERSTAND, "not a DICOM Part 10 file (no readable file meta)"
        )
    elif sop_class not in accepted.sop_classes:
        refusal = InstanceRejected(
            DicomStatus.SOP_CLASS_NOT_SUPPORTED, "SOP Class not analysed by this node"
        )
    elif transfer_syntax not in accepted.transfer_syntaxes:
        refusal = InstanceRejected(
            DicomStatus.SOP_CLASS_NOT_SUPPORTED, "Transfer Syntax not accepted by this node"
        )
    else:
        return file_received(received, intake)
    return _reject(received, intake, refusal)


def file_received(received: _Received, intake: Intake) -> FilingOutcome:
    """Check, file and record one received instance (or refuse it); never raises."""
    try:
        received.size_bytes = _check_resources(received.path, intake.settings)
        header = _read_header(received.path, intake.settings.max_instance_mb)
        received.study_uid = _uid_or_none(header, "StudyInstanceUID")
        record = _check(header, received, intake.settings)
        outcome = _file(record, received, intake)
    except InstanceRejected as rejection:
        return _reject(received, intake, rejection)
    except Exception:
        # A bug must not end the association: refuse this instance, keep serving.
        log.exception("unexpected error while storing an instance from %s", received.calling_ae)
        internal = InstanceRejected(DicomStatus.CANNOT_UNDERSTAND, "internal error")
        return _reject(received, intake, internal)
    intake.metrics.received.labels(modality=modality_label(record.modality)).inc()
    log.info(
        "stored %s instance %s of study %s from %s%s",
        clean(record.modality),
        record.sop_instance_uid,
        record.study_instance_uid,
        received.calling_ae,
        " (duplicate, replaced)" if outcome.duplicate else "",
    )
    _audit(intake, received, DicomStatus.SUCCESS)
    if outcome.gathering:
        intake.on_instance(outcome, id(received.peer))
    return FilingOutcome(DicomStatus.SUCCESS)


def refile_unrecorded(settings: IntakeSettings, joblog: IntakeLog) -> int:
    """Record inbox files the job log does not know; returns how many.

    Success is answered once the file is durable (fsync of the file and of its directory)
    and its row committed; the job log's commits are durable against a crash of the process
    but, with SQLite's ``synchronous=NORMAL``, not against a power loss.  After one, the last
    acknowledged instances may be in the inbox without a row: the file is the durable record,
    and this restores the row from its header (calling AE ``RECOVERED``) before intake opens.
    """
    known = joblog.filed_paths()
    restored = 0
    for path in sorted(settings.inbox_dir.rglob("*.dcm")) if settings.inbox_dir.is_dir() else []:
        if str(path) in known or path.name.startswith(".tmp-"):
            continue
        try:
            header = _read_header(path, settings.max_instance_mb)
            record = _recovered_record(header, path)
            joblog.record_instance(record)
        except (InstanceRejected, SQLAlchemyError, OSError) as exc:
            reason = exc.reason if isinstance(exc, InstanceRejected) else _kind(exc)
            log.error("inbox file %s could not be recorded: %s", path.name, reason)
            continue
        restored += 1
    return restored


def _recovered_record(header: Dataset, path: Path) -> InstanceRecord:
    uids = _header_uids(header)
    transfer_syntax = str(header.file_meta.get("TransferSyntaxUID", ""))
    return _record_from(header, uids, transfer_syntax, "RECOVERED", path, path.stat().st_size)


def _check_resources(path: Path, settings: IntakeSettings) -> int:
    """Disk and size guards; returns the instance's size in bytes."""
    free = free_disk_mb(settings.data_dir)
    if free < settings.min_free_disk_mb:
        raise InstanceRejected(
            DicomStatus.OUT_OF_RESOURCES,
            f"free disk space {free:.0f} MB is below min_free_disk_mb={settings.min_free_disk_mb}",
        )
    size = path.stat().st_size
    if size > settings.max_instance_mb * MIB:
        raise InstanceRejected(
            DicomStatus.OUT_OF_RESOURCES,
            f"instance of {size / MIB:.0f} MiB exceeds max_instance_mb={settings.max_instance_mb}",
        )
    return size


def _read_header(path: Path, max_instance_mb: int) -> Dataset:
    """Parse everything but large values; a broken header is refused naming the step.

    A deflated data set is inflated as a stream and counted: more than ``max_instance_mb``
    inflated is refused (``0xA700``) at the chunk that crosses it, with nothing held.
    """
    try:
        dataset = read_part10(path, max_instance_mb * MIB, defer_size=DEFER_BYTES)
        # pydicom parses lazily: convert every small element now, so a broken value is
        # refused here rather than found later by the worker.  Large ones stay on disk.
        _touch(dataset, depth=0)
    except InstanceRejected:
        raise
    except InflateLimitExceeded:
        raise InstanceRejected(
            DicomStatus.OUT_OF_RESOURCES,
            f"the deflated data set inflates to more than max_instance_mb={max_instance_mb}",
        ) from None
    except InflateError as exc:
        raise InstanceRejected(
            DicomStatus.CANNOT_UNDERSTAND, f"the deflated data set cannot be inflated ({exc})"
        ) from None
    except Exception as exc:  # pydicom raises many kinds on garbage
        raise InstanceRejected(
            DicomStatus.CANNOT_UNDERSTAND, f"data set header cannot be parsed ({_kind(exc)})"
        ) from None
    return dataset


MAX_SEQUENCE_DEPTH = 16
# What pynetdicom writes as the received file's meta (``create_file_meta``); anything more was
# sent inside the data set and would, read back, change what the worker sees.
_OWN_FILE_META = frozenset(
    Tag(0x0002, element) for element in (0x0000, 0x0001, 0x0002, 0x0003, 0x0010, 0x0012, 0x0013)
)


def _check_no_file_meta_in_data_set(header: Dataset, received: _Received) -> None:
    meta = header.file_meta
    # keys(), not the data set itself: iterating a Dataset would parse every value.
    inside = any(tag.group == 0x0002 for tag in header.keys())  # noqa: SIM118
    if inside or (
        received.receiver_wrote_meta
        and (
            not set(meta.keys()) <= _OWN_FILE_META
            or str(meta.get("TransferSyntaxUID", "")) != received.transfer_syntax
            or str(meta.get("MediaStorageSOPInstanceUID", "")) != received.sop_uid
        )
    ):
        raise InstanceRejected(_INVALID, "File Meta Information (group 0002) inside the data set")


def _touch(dataset: Dataset, depth: int) -> None:
    if depth > MAX_SEQUENCE_DEPTH:
        raise InstanceRejected(
            DicomStatus.CANNOT_UNDERSTAND, f"sequences nested deeper than {MAX_SEQUENCE_DEPTH}"
        )
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag, keep_deferred=True)  # never read a deferred value
        if isinstance(raw, RawDataElement) and raw.length > DEFER_BYTES:
            continue
        element = dataset[tag]
        if element.VR == "SQ":
            for item in element.value:
                _touch(item, depth + 1)


def _check(header: Dataset, received: _Received, settings: IntakeSettings) -> InstanceRecord:
    """What filing, routing and the pipelines rely on; returns the instance's record."""
    declared = (
        "the C-STORE request's Affected SOP Instance UID"
        if received.receiver_wrote_meta
        else "the file meta's Media Storage SOP Instance UID"
    )
    if not is_safe_uid(received.sop_uid):
        raise InstanceRejected(_INVALID, f"{declared} is missing or not a valid UID")
    uids = _header_uids(header)
    if uids["SOPInstanceUID"] != received.sop_uid:
        raise InstanceRejected(_INVALID, f"SOPInstanceUID differs from {declared}")
    expected = received.expected_study_uid
    if expected is not None and uids["StudyInstanceUID"] != expected:
        raise InstanceRejected(_INVALID, "StudyInstanceUID differs from the study in the URL")
    _check_no_file_meta_in_data_set(header, received)
    transfer_syntax = UID(received.transfer_syntax)
    _check_pixel_data(header, transfer_syntax, settings, received.path)
    target = inbox_path(
        settings.inbox_dir,
        uids["StudyInstanceUID"],
        uids["SeriesInstanceUID"],
        uids["SOPInstanceUID"],
    )
    return _record_from(
        header, uids, str(transfer_syntax), received.calling_ae, target, received.size_bytes
    )


UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def _header_uids(header: Dataset) -> dict[str, str]:
    """The four UIDs filing needs; ``0xA900`` naming the first that is missing or invalid."""
    uids = {}
    for keyword in UID_KEYWORDS:
        value = _uid_or_none(header, keyword)
        if value is None:
            problem = "missing" if keyword not in header else "not a valid UID"
            raise InstanceRejected(_INVALID, f"{keyword} is {problem}")
        uids[keyword] = value
    return uids


def _record_from(
    header: Dataset,
    uids: dict[str, str],
    transfer_syntax: str,
    calling_ae: str,
    path: Path,
    size_bytes: int,
) -> InstanceRecord:
    routing_fields = header_info(header)
    return InstanceRecord(
        patient_key=patient_key(header),
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        transfer_syntax_uid=transfer_syntax,
        modality=routing_fields.modality,
        body_part=routing_fields.body_part,
        image_type=routing_fields.image_type,
        view_position=routing_fields.view_position,
        description=routing_fields.description,
        calling_ae=calling_ae,
        path=str(path),
        size_bytes=size_bytes,
    )


def _check_pixel_data(
    header: Dataset, transfer_syntax: UID, settings: IntakeSettings, path: Path
) -> None:
    """Refuse image datasets without pixels, with fewer pixel bytes than declared, whose
    pixels would decode to more than ``max_decoded_mb``, or whose compressed frames' own
    headers disagree with Rows, Columns, Samples per Pixel or Bits Allocated (``codestream``:
    checked before anything decodes, reading only those headers).

    Compressed pixel data cannot be checked further without decoding; a broken stream there
    shows up as a failed job naming the instance and the decode step.
    """
    if "PixelData" not in header:
        raise InstanceRejected(_INVALID, "Pixel Data (7FE0,0010) is missing")
    geometry = codestream.geometry_of(header)
    codestream.check_decoded_size(geometry, settings.max_decoded_mb)
    length = _pixel_data_length(header)
    if length == 0:
        raise InstanceRejected(_INVALID, "Pixel Data (7FE0,0010) is empty")
    if codestream.is_checked(transfer_syntax):
        _check_frames(header, transfer_syntax, geometry, path)
    if transfer_syntax.is_compressed or length is None:
        return
    expected = geometry.decoded_bytes
    if length < expected:
        raise InstanceRejected(
            DicomStatus.CANNOT_UNDERSTAND,
            f"Pixel Data truncated: {length} bytes, {expected} expected "
            f"for {geometry.frames} frame(s) of {geometry.rows}x{geometry.columns}",
        )


def _check_frames(
    header: Dataset, transfer_syntax: UID, geometry: codestream.Geometry, path: Path
) -> None:
    """The frame headers of encapsulated Pixel Data, read where the value lies (on disk when
    the header read deferred it)."""
    element = header.get_item("PixelData", keep_deferred=True)
    if isinstance(element, RawDataElement) and element.value is None:
        with path.open("rb") as handle:
            end = path.stat().st_size
            if element.length != 0xFFFFFFFF:
                end = min(end, element.value_tell + element.length)
            handle.seek(element.value_tell)
            codestream.check_frames(handle, end, transfer_syntax, geometry)
        return
    value = element.value if isinstance(element, RawDataElement) else header.PixelData
    data = bytes(value or b"")
    codestream.check_frames(io.BytesIO(data), len(data), transfer_syntax, geometry)


def _pixel_data_length(header: Dataset) -> int | None:
    """Bytes of Pixel Data without reading them; None for undefined length (encapsulated)."""
    element = header.get_item("PixelData", keep_deferred=True)
    if isinstance(element, RawDataElement):  # deferred: only its length was read
        return None if element.length == 0xFFFFFFFF else int(element.length)
    value = header.PixelData
    return len(value) if value else 0


def patient_key(header: Dataset) -> str:
    """A one-way key of the patient identity: SHA-256 of IssuerOfPatientID and PatientID (an
    absent or unreadable value counts as empty).  The job log keeps the key, never the values,
    and compares it within a study; it is never logged."""
    parts = []
    for keyword in ("IssuerOfPatientID", "PatientID"):
        try:
            value = header.get(keyword)
        except Exception:
            value = None
        parts.append(str(value).strip() if value else "")
    text = "dicom-node patient\x1f" + "\x1f".join(parts)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _file(record: InstanceRecord, received: _Received, intake: Intake) -> RecordOutcome:
    """Move the bytes into the inbox (durably), then record them; undo the move on failure.

    A resend replaces the stored file: its patient is checked first, so a refusal never
    leaves another patient's bytes in the place of the study's.  A resend filed in another
    series removes the earlier file once its row points to the new one.
    """
    target = Path(record.path)
    created = not target.exists()
    if not created:
        try:
            intake.joblog.check_patient(record)
        except SQLAlchemyError as exc:
            raise JobLogUnavailable(exc) from None
    try:
        adopt_file(received.path, target, fsync=intake.settings.fsync)
    except OSError as exc:
        raise InstanceRejected(
            DicomStatus.OUT_OF_RESOURCES, f"writing to the inbox failed ({_kind(exc)})"
        ) from None
    try:
        outcome = intake.joblog.record_instance(record)
    except (InstanceRejected, SQLAlchemyError) as exc:
        if created:  # put the bytes back, so the refusal can quarantine them
            adopt_file(target, received.path, fsync=False)
        if isinstance(exc, InstanceRejected):
            raise
        raise JobLogUnavailable(exc) from None
    if outcome.replaced_path is not None:
        _remove_replaced(Path(outcome.replaced_path))
    return outcome


def _remove_replaced(path: Path) -> None:
    """The earlier file of a resend into another series: no row points to it any more."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.error("could not remove the replaced file %s: %s", path.name, _kind(exc))


def _reject(received: _Received, intake: Intake, rejection: InstanceRejected) -> FilingOutcome:
    """Log and record a refusal; keep the bytes in quarantine unless the disk is the problem.

    Everything here is defensive: the refusal path must work for any data set.
    """
    status = rejection.status
    unavailable = isinstance(rejection, JobLogUnavailable)
    if received.record_refusal:
        quarantine = _quarantine(received, intake, status)
        # Not recorded when the job log just failed: a second wait, for the same answer.
        if not unavailable and not _record_rejection(received, intake, rejection, quarantine):
            unavailable = True
        log.warning(
            "refused instance %s from %s: %s (status 0x%04X)",
            _safe_uid(received.sop_uid) or loggable_uid(received.sop_uid),
            received.calling_ae,
            rejection.reason,
            status,
        )
    intake.metrics.rejected.labels(reason=_reason_label(status)).inc()
    _audit(intake, received, status)
    return FilingOutcome(int(status), rejection.reason, unavailable)


def _quarantine(received: _Received, intake: Intake, status: int) -> str | None:
    """Move the refused bytes to ``quarantine/``; where they are, or None."""
    if status == DicomStatus.OUT_OF_RESOURCES or not received.path.exists():
        return None
    # Unique names: refusals of the same (or no) UID must not overwrite each other.
    name = received.sop_uid if is_safe_uid(received.sop_uid) else "unnamed"
    path = intake.settings.quarantine_dir / f"{name}-{uuid.uuid4().hex[:12]}.dcm"
    try:
        adopt_file(received.path, path, fsync=intake.settings.fsync)
    except OSError as exc:
        log.error("could not quarantine a refused instance: %s", _kind(exc))
        return None
    return str(path)


def _record_rejection(
    received: _Received, intake: Intake, rejection: InstanceRejected, quarantine: str | None
) -> bool:
    """The refusal's job-log row; False when the job log could not take it."""
    try:
        intake.joblog.record_rejection(
            calling_ae=received.calling_ae,
            status=rejection.status,
            reason=rejection.reason,
            study_instance_uid=received.study_uid,
            sop_instance_uid=_safe_uid(received.sop_uid),
            sop_class_uid=_safe_uid(received.sop_class),
            quarantine_path=quarantine,
        )
    except SQLAlchemyError as exc:
        log.error("could not record a refusal in the job log: %s", _kind(exc))
        return False
    return True


def _safe_uid(value: str) -> str | None:
    return value if is_safe_uid(value) else None


def count_refusal(intake: Intake, peer: Any, sop_uid: str, status: int) -> None:
    """A refusal its caller decided without filing (STOW-RS: the part could not be written, or
    the job log already failed the request): counted in the metrics and the audit trail like
    any other; the caller summarises it in the log and the job log."""
    intake.metrics.rejected.labels(reason=_reason_label(status)).inc()
    if intake.audit is None:
        return
    try:
        intake.audit.instance(peer, None, _safe_uid(sop_uid), status)
    except Exception:
        log.exception("writing the audit trail failed")


def _audit(intake: Intake, received: _Received, status: int) -> None:
    if intake.audit is None:
        return
    try:
        sop_uid = received.sop_uid if is_safe_uid(received.sop_uid) else None
        intake.audit.instance(received.peer, received.study_uid, sop_uid, status)
    except Exception:
        log.exception("writing the audit trail failed")


def _uid_or_none(header: Dataset, keyword: str) -> str | None:
    try:
        value = header.get(keyword)
    except Exception:
        return None
    return str(value) if is_safe_uid(value) else None


def _reason_label(status: int) -> str:
    return {
        DicomStatus.OUT_OF_RESOURCES: "out_of_resources",
        DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS: "invalid_dataset",
        DicomStatus.CANNOT_UNDERSTAND: "cannot_understand",
        DicomStatus.SOP_CLASS_NOT_SUPPORTED: "not_supported",
    }.get(DicomStatus(status), "other")


def _calling_ae(event: evt.Event) -> str:
    return clean(str(event.assoc.requestor.ae_title).strip(), 16)


def _kind(exc: BaseException) -> str:
    """The exception's class only: its message may quote attribute values (patient data)."""
    return type(exc).__name__

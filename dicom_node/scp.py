"""The DICOM Storage SCP: association policy and the C-ECHO / C-STORE handlers.

The C-STORE handler does the minimum on the association's thread: check, write the received
bytes atomically into the inbox (pixels are never decoded here), record the instance in the
job log, arm the study's quiet timer, answer.  Models run elsewhere (``worker``).

Dependencies are bound at start (``evt_handlers=[(evt.EVT_C_STORE, handle_store, [intake])]``)
rather than read from globals, so tests can drive the handler with a real dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedCTImageStorage,
    Verification,
)

from dicom_node.config import Settings
from dicom_node.errors import DicomStatus, InstanceRejected
from dicom_node.joblog import IntakeLog
from dicom_node.joblog.records import InstanceRecord, RecordOutcome
from dicom_node.metrics import Metrics
from dicom_node.storage import atomic_write, free_disk_mb, inbox_path, is_safe_uid

log = logging.getLogger(__name__)

STORAGE_SOP_CLASSES: tuple[UID, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    CTImageStorage,
    EnhancedCTImageStorage,
)
NATIVE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
)
# Compressed syntaxes are stored as received and decoded at processing (pylibjpeg plugins).
COMPRESSED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
ACCEPTED_TRANSFER_SYNTAXES = NATIVE_TRANSFER_SYNTAXES + COMPRESSED_TRANSFER_SYNTAXES


@dataclass
class Intake:
    """What the C-STORE handler needs, bound once at start."""

    settings: Settings
    joblog: IntakeLog
    metrics: Metrics
    on_instance: Callable[[RecordOutcome], None]


def handle_echo(event: evt.Event) -> int:
    return DicomStatus.SUCCESS


def handle_store(event: evt.Event, intake: Intake) -> int:
    """File one C-STORE request; returns its status (pynetdicom sends it as the response).

    Statuses:

    * ``0x0000`` Success: the bytes are durable in the inbox (fsynced unless ``fsync`` is
      off) and the instance is in the job log; a resent SOP Instance UID replaces the file.
    * ``0xA700`` Out of Resources: free disk space is below ``min_free_disk_mb``, or writing
      failed (the sender may retry later); nothing is kept.
    * ``0xA900`` Data Set Does Not Match SOP Class: a UID that filing needs is missing or
      invalid, SOP Instance UID differs from the request's, Pixel Data is missing, or the
      image pixel description is incomplete.
    * ``0xC000`` Cannot Understand: the data set cannot be decoded, its native Pixel Data is
      shorter than declared, or an unexpected error occurred (the association goes on).

    Every refusal is recorded in the job log (``rejected``) with its reason, and the bytes
    are kept in ``quarantine/`` unless the disk is the problem.
    """
    calling_ae = _calling_ae(event)
    sop_class = str(getattr(event.request, "AffectedSOPClassUID", "") or "")
    try:
        _check_disk(intake.settings)
        try:
            dataset = event.dataset
        except Exception as exc:  # pydicom raises many kinds on garbage
            raise InstanceRejected(
                DicomStatus.CANNOT_UNDERSTAND, f"data set cannot be decoded: {_short(exc)}"
            ) from exc
        record = _file_instance(event, dataset, calling_ae, intake.settings)
        outcome = intake.joblog.record_instance(record)
    except InstanceRejected as rejection:
        return _reject(event, intake, calling_ae, sop_class, rejection)
    except OSError as exc:
        log.error("storing an instance from %s failed: %s", calling_ae, exc)
        intake.metrics.rejected.labels(reason="io_error").inc()
        return DicomStatus.OUT_OF_RESOURCES
    except Exception:
        # Never let a bug end the association: refuse this instance, keep serving.
        log.exception("unexpected error while storing an instance from %s", calling_ae)
        return _reject(
            event,
            intake,
            calling_ae,
            sop_class,
            InstanceRejected(DicomStatus.CANNOT_UNDERSTAND, "internal error"),
        )
    intake.metrics.received.labels(modality=record.modality or "unknown").inc()
    log.info(
        "stored %s instance %s of study %s from %s%s",
        record.modality,
        record.sop_instance_uid,
        record.study_instance_uid,
        calling_ae,
        " (duplicate, replaced)" if outcome.duplicate else "",
    )
    if outcome.gathering:
        intake.on_instance(outcome)
    return DicomStatus.SUCCESS


def _file_instance(
    event: evt.Event, dataset: Dataset, calling_ae: str, settings: Settings
) -> InstanceRecord:
    """Validate what is needed to file the instance, then write its bytes to the inbox."""
    uids = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = dataset.get(keyword)
        if not is_safe_uid(value):
            problem = "missing" if not value else "not a valid UID"
            raise InstanceRejected(
                DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is {problem}"
            )
        uids[keyword] = str(value)
    if uids["SOPInstanceUID"] != _affected_sop_instance(event):
        raise InstanceRejected(
            DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "SOPInstanceUID differs from the C-STORE request's Affected SOP Instance UID",
        )
    transfer_syntax = UID(str(event.context.transfer_syntax))
    _check_pixel_data(dataset, transfer_syntax)
    path = inbox_path(
        settings.inbox_dir,
        uids["StudyInstanceUID"],
        uids["SeriesInstanceUID"],
        uids["SOPInstanceUID"],
    )
    data = event.encoded_dataset(include_meta=True)
    atomic_write(path, data, fsync=settings.fsync)
    return InstanceRecord(
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        transfer_syntax_uid=str(transfer_syntax),
        modality=_text(dataset.get("Modality")),
        body_part=_text(dataset.get("BodyPartExamined")),
        image_type="\\".join(str(v) for v in dataset.get("ImageType", []) or []) or None,
        description=_descriptions(dataset),
        calling_ae=calling_ae,
        path=str(path),
        size_bytes=len(data),
    )


def _check_pixel_data(dataset: Dataset, transfer_syntax: UID) -> None:
    """Refuse image datasets without pixels, or with fewer pixel bytes than declared.

    Compressed pixel data cannot be checked without decoding; a broken stream there shows up
    as a failed job with the decoder's message.
    """
    if "PixelData" not in dataset:
        raise InstanceRejected(
            DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "Pixel Data (7FE0,0010) is missing"
        )
    if transfer_syntax.is_compressed:
        return
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        bits = int(dataset.BitsAllocated)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise InstanceRejected(
            DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"image pixel description incomplete: {_short(exc)}",
        ) from exc
    expected = (rows * columns * samples * frames * bits + 7) // 8
    actual = len(dataset.PixelData)
    if actual < expected:
        raise InstanceRejected(
            DicomStatus.CANNOT_UNDERSTAND,
            f"Pixel Data truncated: {actual} bytes, {expected} expected "
            f"for {frames} frame(s) of {rows}x{columns}",
        )


def _check_disk(settings: Settings) -> None:
    free = free_disk_mb(settings.data_dir)
    if free < settings.min_free_disk_mb:
        raise InstanceRejected(
            DicomStatus.OUT_OF_RESOURCES,
            f"free disk space {free:.0f} MB is below min_free_disk_mb={settings.min_free_disk_mb}",
        )


def _reject(
    event: evt.Event, intake: Intake, calling_ae: str, sop_class: str, rejection: InstanceRejected
) -> int:
    """Log and record a refusal; keep the bytes in quarantine unless the disk is full."""
    quarantine = None
    dataset = _maybe_dataset(event)
    sop_uid = _affected_sop_instance(event)
    if rejection.status != DicomStatus.OUT_OF_RESOURCES and is_safe_uid(sop_uid):
        path = intake.settings.quarantine_dir / f"{sop_uid}.dcm"
        try:
            atomic_write(path, event.encoded_dataset(), fsync=intake.settings.fsync)
            quarantine = str(path)
        except OSError as exc:
            log.error("could not quarantine a rejected instance: %s", exc)
    study_uid = dataset.get("StudyInstanceUID") if dataset is not None else None
    intake.joblog.record_rejection(
        calling_ae=calling_ae,
        status=rejection.status,
        reason=rejection.reason,
        study_instance_uid=str(study_uid) if is_safe_uid(study_uid) else None,
        sop_instance_uid=sop_uid if is_safe_uid(sop_uid) else None,
        sop_class_uid=sop_class or None,
        quarantine_path=quarantine,
    )
    intake.metrics.rejected.labels(reason=_reason_label(rejection.status)).inc()
    log.warning(
        "refused instance %s from %s: %s (status 0x%04X)",
        sop_uid or "?",
        calling_ae,
        rejection.reason,
        rejection.status,
    )
    return rejection.status


def _affected_sop_instance(event: evt.Event) -> str:
    return str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")


def _maybe_dataset(event: evt.Event) -> Dataset | None:
    try:
        return event.dataset
    except Exception:
        return None


def _reason_label(status: DicomStatus) -> str:
    return {
        DicomStatus.OUT_OF_RESOURCES: "out_of_resources",
        DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS: "invalid_dataset",
        DicomStatus.CANNOT_UNDERSTAND: "cannot_understand",
    }.get(status, "other")


def _calling_ae(event: evt.Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _descriptions(dataset: Dataset) -> str | None:
    """Study/series/protocol descriptions, used by routing when Body Part is absent."""
    parts = [
        _text(dataset.get(k)) for k in ("StudyDescription", "SeriesDescription", "ProtocolName")
    ]
    joined = " | ".join(p for p in parts if p)
    return joined[:256] or None


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 200 else text[:197] + "..."


def _log_association(event: evt.Event) -> None:
    requestor = event.assoc.requestor
    log.info(
        "association %s: calling AE %s from %s:%s",
        event.event.name.replace("EVT_", "").lower(),
        str(requestor.ae_title).strip(),
        requestor.address,
        requestor.port,
    )


def build_ae(settings: Settings) -> AE:
    """The application entity with our presentation contexts and association policy."""
    ae = AE(ae_title=settings.ae_title)
    ae.require_called_aet = settings.require_called_ae
    if settings.allowed_aes:
        ae.require_calling_aet = list(settings.allowed_aes)
    ae.network_timeout = settings.network_timeout_seconds
    ae.acse_timeout = settings.network_timeout_seconds
    ae.dimse_timeout = settings.network_timeout_seconds
    ae.maximum_associations = 16
    ae.add_supported_context(Verification)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
    return ae


def start_scp(settings: Settings, intake: Intake) -> Any:
    """Start listening in background threads; returns pynetdicom's server (``.shutdown()``)."""
    ae = build_ae(settings)
    handlers = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [intake]),
        (evt.EVT_ACCEPTED, _log_association),
        (evt.EVT_REJECTED, _log_association),
    ]
    server = ae.start_server(
        (settings.host, settings.port),
        block=False,
        evt_handlers=handlers,  # type: ignore[arg-type]
    )
    log.info("DICOM SCP %s listening on %s:%d", settings.ae_title, settings.host, settings.port)
    return server

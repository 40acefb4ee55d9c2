"""Test data built from real sources (pydicom-data's chest CR) or generated on the fly."""

from __future__ import annotations

import copy
import io
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicom_node.domain import XRAY_CLASSES, XrayFinding, XrayImageFinding, XraySeverity
from dicom_node.joblog.records import InstanceRecord


@lru_cache(maxsize=1)
def _rg1() -> Dataset:
    path = get_testdata_file("RG1_UNCR.dcm")
    assert path is not None, "pydicom-data is not installed"
    return pydicom.dcmread(path)


def chest_cr(new_uids: bool = False) -> Dataset:
    """The real adult chest CR (MONOCHROME1, 15-bit) from pydicom-data; optionally re-identified."""
    ds = copy.deepcopy(_rg1())
    if new_uids:
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def viewable_chest_cr(new_uids: bool = False) -> tuple[Dataset, str | None]:
    """The real chest CR as a viewer can show it, and what was changed (None: nothing).

    RG1 carries Pixel Spacing 0\\0, which is invalid (spacing must be positive) and makes
    OHIF's viewport fail to render; the copy drops it (Imager Pixel Spacing is absent too,
    so the node and the viewer treat the image as uncalibrated)."""
    ds = chest_cr(new_uids)
    spacing = ds.get("PixelSpacing")
    if spacing is not None and any(float(v) <= 0 for v in spacing):
        del ds.PixelSpacing
        return ds, "removed the invalid Pixel Spacing 0\\0 (OHIF cannot render it)"
    return ds, None


def encode(ds: Dataset) -> bytes:
    """A dataset as DICOM file bytes (for ``OrthancServer.upload``)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def small_cr(rows: int = 64, columns: int = 48) -> Dataset:
    """The real CR cut down to a small image (fast to send many times)."""
    ds = chest_cr(new_uids=True)
    step_r, step_c = ds.Rows // rows, ds.Columns // columns
    pixels = ds.pixel_array[::step_r, ::step_c][:rows, :columns].astype(np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    return ds


SYNTHETIC_SEVERITY = XraySeverity(geographic_extent=3.4, opacity=2.1, level=2)


def synthetic_xray_finding(
    source: Dataset, label: str = "covid", severity: XraySeverity | None = SYNTHETIC_SEVERITY
) -> XrayFinding:
    """A finding with a Gaussian hot spot, as a pipeline would produce for ``source``."""
    rows, columns = int(source.Rows), int(source.Columns)
    yy, xx = np.mgrid[:rows, :columns]
    centre_r, centre_c = rows * 0.45, columns * 0.3
    heat = np.exp(-(((yy - centre_r) / (rows / 8)) ** 2 + ((xx - centre_c) / (columns / 8)) ** 2))
    half_r, half_c = rows / 10, columns / 10
    region = np.array(
        [
            [centre_c - half_c, centre_r - half_r],
            [centre_c + half_c, centre_r - half_r],
            [centre_c + half_c, centre_r + half_r],
            [centre_c - half_c, centre_r + half_r],
            [centre_c - half_c, centre_r - half_r],
        ]
    )
    others = [k for k in XRAY_CLASSES if k != label]
    probabilities = {label: 0.8, others[0]: 0.15, others[1]: 0.05}
    display = (255 * (heat * 0.5 + 0.25)).astype(np.uint8)
    image = XrayImageFinding(
        str(source.SOPInstanceUID),
        label,
        probabilities,
        heat.astype(np.float32),
        region,
        display,
        severity=severity,
    )
    return XrayFinding((image,))


def instance_record(study: str, sop: str, modality: str = "CR") -> InstanceRecord:
    """What the SCP would record for one CR instance ``sop`` of ``study`` (one series)."""
    return InstanceRecord(
        study_instance_uid=study,
        series_instance_uid=study + ".1",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality=modality,
        body_part="CHEST",
        image_type=None,
        view_position=None,
        description=None,
        calling_ae="MODALITY",
        path=f"/inbox/{sop}.dcm",
        size_bytes=10,
    )


def grey_dataset(
    stored: np.ndarray,
    photometric: str,
    bits_stored: int,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    signed: bool = False,
) -> Dataset:
    """A minimal DX-like grey-scale dataset around ``stored`` pixel values."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits_stored > 8 else 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    dtype = (np.int16 if signed else np.uint16) if bits_stored > 8 else np.uint8
    ds.PixelData = stored.astype(dtype).tobytes()
    return ds


def hand_crs(directory: Path, n: int) -> list[Path]:
    """``n`` CRs of one study (a hand: routing ignores it, no model is needed)."""
    directory.mkdir(parents=True)
    first = small_cr()
    paths = []
    for i in range(n):
        ds = small_cr() if i else first
        ds.BodyPartExamined = "HAND"
        ds.StudyInstanceUID = first.StudyInstanceUID
        ds.SeriesInstanceUID = first.SeriesInstanceUID
        paths.append(directory / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths

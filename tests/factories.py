"""Test data built from real sources (pydicom-data's chest CR) or generated on the fly."""

from __future__ import annotations

import copy
from functools import lru_cache

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_node.pipelines.findings import XRAY_CLASSES, XrayFinding, XrayImageFinding


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


def small_cr(rows: int = 64, columns: int = 48) -> Dataset:
    """The real CR cut down to a small image (fast to send many times)."""
    ds = chest_cr(new_uids=True)
    step_r, step_c = ds.Rows // rows, ds.Columns // columns
    pixels = ds.pixel_array[::step_r, ::step_c][:rows, :columns].astype(np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    return ds


def synthetic_xray_finding(source: Dataset, label: str = "covid") -> XrayFinding:
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
        str(source.SOPInstanceUID), label, probabilities, heat.astype(np.float32), region, display
    )
    return XrayFinding((image,))

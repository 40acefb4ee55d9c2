"""Pixel values of source images, shared by the pipelines and the output builders.

Imports neither: the CT pipeline reads slices in Hounsfield units to analyse them, the CT
outputs read them again to render key images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

HU_MIN, HU_MAX = -1024, 3071
_UNCOMPRESSED = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}


def stored_pixels(ds: Dataset) -> np.ndarray:
    """The stored values of a single-frame grayscale image.

    Uncompressed 16-bit data is viewed straight from the bytes (several times faster than
    ``pixel_array`` for hundreds of slices); anything else goes through pydicom's decoders.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if (
        syntax in _UNCOMPRESSED
        and ds.get("BitsAllocated") == 16
        and ds.get("SamplesPerPixel", 1) == 1
        and int(ds.get("NumberOfFrames", 1) or 1) == 1
        and "PixelData" in ds
    ):
        signed = ds.get("PixelRepresentation", 0) == 1
        count = int(ds.Rows) * int(ds.Columns)
        raw = np.frombuffer(ds.PixelData, dtype="<i2" if signed else "<u2", count=count)
        raw = raw.reshape(int(ds.Rows), int(ds.Columns))
        bits = int(ds.get("BitsStored", 16))
        if bits < 16:
            if signed:  # sign-extend from the stored bit width
                shift = 16 - bits
                raw = (raw << shift) >> shift
            else:  # high bits may hold overlays in old data
                raw = raw & ((1 << bits) - 1)
        return raw
    return decoded_pixels(ds)


def decoded_pixels(ds: Dataset) -> np.ndarray:
    """All of the data set's pixels through pydicom's decoders, not kept on the data set.

    RLE goes through pylibjpeg-rle, which decodes into a buffer of the image's size: pydicom's
    own RLE decoder grows each segment to whatever its runs say (a 2 MB segment can say
    128 MB) before it compares.  pylibjpeg-rle stops at a run that would pass its buffer with
    a Rust panic, which Python raises as a ``BaseException`` no handler expects: it becomes a
    ``ValueError`` here (the worker counts the runs first, ``intake.codestream``, so this is a
    second line).  ``ds.pixel_array`` would also keep the array on the data set for as long
    as the data set lives (the whole job); the callers keep what they need.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    plugin = "pylibjpeg" if syntax == RLELossless else ""
    try:
        return np.asarray(pixel_array(ds, decoding_plugin=plugin))
    except Exception:
        raise
    except BaseException as exc:  # pyo3's PanicException; KeyboardInterrupt etc. go on
        if type(exc).__name__ != "PanicException":
            raise
        raise ValueError("the decoder stopped on data that overruns the image") from None


def hu_image(ds: Dataset, step: int = 1) -> np.ndarray:
    """One slice in HU (int16, clipped to -1024..3071), every ``step``-th pixel."""
    raw = stored_pixels(ds)[::step, ::step]
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope == 1.0 and intercept.is_integer():
        values = raw.astype(np.int32) + int(intercept)
    else:
        values = np.rint(raw.astype(np.float32) * slope + intercept).astype(np.int32)
    return np.clip(values, HU_MIN, HU_MAX).astype(np.int16)


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image: ``display`` is float32 in [0, 1], MONOCHROME2, shape (rows, columns)."""

    path: Path | None
    display: np.ndarray
    dataset: Dataset | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.display.shape[0]), int(self.display.shape[1]))

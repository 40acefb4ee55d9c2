"""Test material made from a real CT series: renamed, compressed, cropped, resliced.

Every variant gets new Study, Series and SOP Instance UIDs (derived from the variant's name),
so that it can be sent to the same node and PACS as the original: the node refuses a SOP
Instance UID already filed under another study.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.uid import JPEG2000Lossless, generate_uid

JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_2000_LOSSLESS = str(JPEG2000Lossless)


def _rename(ds: Dataset, variant: str) -> None:
    entropy = [variant]
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[*entropy, "study", str(ds.StudyInstanceUID)])
    ds.SeriesInstanceUID = generate_uid(
        entropy_srcs=[*entropy, "series", str(ds.SeriesInstanceUID)]
    )
    sop = generate_uid(entropy_srcs=[*entropy, "sop", str(ds.SOPInstanceUID)])
    ds.SOPInstanceUID = sop
    if hasattr(ds, "file_meta"):
        ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.pop("ReferencedImageSequence", None)  # it points at the original instances


def renamed(files: Sequence[Path], out_dir: Path, variant: str) -> list[Path]:
    """Copies with new UIDs (same pixels, same transfer syntax)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        ds = pydicom.dcmread(path)
        _rename(ds, variant)
        target = out_dir / path.name
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def compressed(files: Sequence[Path], out_dir: Path, syntax: str) -> list[Path]:
    """Lossless copies in ``syntax``: JPEG Lossless SV1 and RLE with DCMTK, JPEG 2000 with
    pydicom (pylibjpeg-openjpeg).  The UIDs are kept; rename first to send both."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        target = out_dir / path.name
        if syntax == JPEG_LOSSLESS_SV1:
            subprocess.run(["dcmcjpeg", "+e1", str(path), str(target)], check=True, timeout=60)
        elif syntax == RLE_LOSSLESS:
            subprocess.run(["dcmcrle", str(path), str(target)], check=True, timeout=60)
        elif syntax == JPEG_2000_LOSSLESS:
            ds = pydicom.dcmread(path)
            ds.compress(JPEG2000Lossless)
            ds.save_as(target, enforce_file_format=True)
        else:
            raise ValueError(f"unsupported transfer syntax {syntax}")
        got = str(pydicom.dcmread(target, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        if got != syntax:
            raise AssertionError(f"{target.name}: transfer syntax {got}, wanted {syntax}")
        written.append(target)
    return written


def _sorted_by_position(files: Sequence[Path]) -> list[Dataset]:
    datasets = [pydicom.dcmread(p) for p in files]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def cropped(files: Sequence[Path], out_dir: Path, first: int, count: int) -> list[Path]:
    """A contiguous stack of ``count`` slices from the ``first`` (by position), renamed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for number, ds in enumerate(_sorted_by_position(files)[first : first + count], start=1):
        _rename(ds, f"cropped-{first}-{count}")
        ds.InstanceNumber = number
        target = out_dir / f"{number:04d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def resliced(files: Sequence[Path], out_dir: Path) -> list[Path]:
    """Thick slices: each pair of neighbours averaged (a 2x thicker reconstruction), renamed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets = _sorted_by_position(files)
    written = []
    for number, (a, b) in enumerate(zip(datasets[::2], datasets[1::2], strict=False), start=1):
        pixels = (a.pixel_array.astype(np.int32) + b.pixel_array.astype(np.int32)) // 2
        ds = a
        ds.PixelData = pixels.astype(a.pixel_array.dtype).tobytes()
        position = [
            (float(x) + float(y)) / 2
            for x, y in zip(a.ImagePositionPatient, b.ImagePositionPatient, strict=True)
        ]
        ds.ImagePositionPatient = [f"{v:.3f}" for v in position]
        ds.SliceLocation = f"{position[2]:.3f}"
        ds.SliceThickness = f"{2 * float(a.SliceThickness):g}"
        ds.InstanceNumber = number
        _rename(ds, "resliced")
        target = out_dir / f"{number:04d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def copy_shuffled(files: Sequence[Path], out_dir: Path, seed: int) -> list[Path]:
    """The files in a seeded random order (names keep the order: 0000.dcm is sent first)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(files))
    written = []
    for number, index in enumerate(order):
        target = out_dir / f"{number:04d}.dcm"
        shutil.copy(files[int(index)], target)
        written.append(target)
    return written

"""Write a phantom as a DICOM CT series (one file per slice) with correct geometry.

Instance numbers can be shuffled relative to slice position on purpose: readers must sort by
position along the slice normal.  The patient is a made-up phantom; UIDs are derived from the
seed so that the same call writes the same series.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from tests.support.synthetic.phantom import Phantom, PhantomTruth, make_phantom, truth_from_counts

PATIENT_NAME = "Phantom^Chest"
PATIENT_ID = "PHANTOM-CT"


@dataclass(frozen=True)
class PhantomSeries:
    """What was written: the truth plus the identity and files of the series."""

    truth: PhantomTruth
    phantom: Phantom
    files: tuple[Path, ...]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str


def write_phantom_series(
    directory: Path,
    n_slices: int = 48,
    size: int = 128,
    *,
    phantom: Phantom | None = None,
    seed: int = 0,
    study_instance_uid: str | None = None,
    series_number: int = 2,
    shuffle_instance_numbers: bool = True,
    signed_pixels: bool = False,
    chunk: int = 16,
    **phantom_args: object,
) -> PhantomSeries:
    """Render ``phantom`` (or ``make_phantom(size, n_slices, seed=seed, **phantom_args)``).

    Files are named ``CT_<instance number>.dcm``.  ``signed_pixels`` stores signed HU with
    intercept 0; the default stores unsigned values with intercept -1024, as many scanners do.
    """
    if phantom is None:
        phantom = make_phantom(size=size, n_slices=n_slices, seed=seed, **phantom_args)  # type: ignore[arg-type]
    directory.mkdir(parents=True, exist_ok=True)
    entropy = [f"dicom-node-phantom-{phantom.seed}-{phantom.n_slices}-{phantom.rows}"]
    study_uid = study_instance_uid or generate_uid(entropy_srcs=[*entropy, "study"])
    series_uid = generate_uid(entropy_srcs=[*entropy, study_uid, str(series_number), "series"])
    frame_uid = generate_uid(entropy_srcs=[*entropy, study_uid, "frame"])

    order = np.arange(phantom.n_slices)
    if shuffle_instance_numbers:
        order = np.random.default_rng(phantom.seed + 1).permutation(phantom.n_slices)
    template = _template(phantom, study_uid, series_uid, frame_uid, series_number, signed_pixels)

    counts = np.zeros((3, 10), dtype=np.int64)
    files: list[Path] = []
    for k0, hu, labels, side in phantom.chunks(chunk):
        np.add.at(counts, (side.ravel(), labels.ravel()), 1)
        for i in range(hu.shape[0]):
            k = k0 + i
            instance = int(order[k]) + 1
            ds = _slice_dataset(template, phantom, k, instance, hu[i], signed_pixels, entropy)
            path = directory / f"CT_{instance:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return PhantomSeries(
        truth=truth_from_counts(counts, phantom.voxel_ml),
        phantom=phantom,
        files=tuple(files),
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        frame_of_reference_uid=frame_uid,
    )


def _template(
    phantom: Phantom,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    series_number: int,
    signed: bool,
) -> Dataset:
    now = datetime.datetime(2026, 1, 15, 9, 30, 0)
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "PHANTOM"
    ds.AccessionNumber = ""
    ds.StudyDescription = "Synthetic chest CT phantom"
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.SeriesDescription = "Synthetic phantom chest" + (
        " 1 mm" if phantom.slice_spacing <= 1.5 else ""
    )
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "dicom-node synthetic"
    ds.ManufacturerModelName = "chest phantom"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [_ds(phantom.pixel_spacing), _ds(phantom.pixel_spacing)]
    ds.SliceThickness = _ds(phantom.slice_spacing)
    ds.KVP = 120
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = phantom.rows
    ds.Columns = phantom.cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if signed else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = 0 if signed else -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = -600
    ds.WindowWidth = 1500
    return ds


def _slice_dataset(
    template: Dataset,
    phantom: Phantom,
    k: int,
    instance: int,
    hu: np.ndarray,
    signed: bool,
    entropy: list[str],
) -> Dataset:
    ds = Dataset()
    ds.update(template)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[*entropy, template.SeriesInstanceUID, str(k)])
    ds.InstanceNumber = instance
    x0, y0 = phantom.origin_xy
    z = phantom.slice_z(k)
    ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
    ds.SliceLocation = _ds(z)
    values = np.rint(hu)
    if signed:
        pixels = np.clip(values, -1024, 3071).astype("<i2")
    else:
        pixels = np.clip(values + 1024, 0, 4095).astype("<u2")
    ds.PixelData = pixels.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def _ds(value: float) -> str:
    """A decimal string that fits the 16-character limit of DS."""
    return f"{value:.6g}"

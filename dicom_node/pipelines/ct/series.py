"""CT series selection and assembly into a Hounsfield-unit volume.

A study may hold several series (reformats, thick and thin reconstructions).  Routing
(:mod:`dicom_node.routing`) has already kept chest CT Image Storage instances that are no
localizer; here we pick the series to analyse from its geometry: axial series,
ORIGINAL/PRIMARY first, then the most slices with consistent spacing; reformats in other planes,
single slices, gappy or irregular stacks are rejected with a reason that ends up in the job log
(never patient data).

Slices are ordered by their position along the slice normal (``ImagePositionPatient`` projected
on ``row x column``), never by ``InstanceNumber``.  The volume is kept on a *working grid*: every
slice, but only every ``step``-th pixel in-plane so the pixels are about 1.5 mm apart.  This is
plain subsampling, not averaging: volumes counted on the subsampled grid stay unbiased (point
counting) and thresholds still see the scanner's own resolution.  HU are stored as int16, so a
1,000-slice 512x512 series costs 1000 * 256 * 256 * 2 bytes = 131 MB.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from dicom_node.errors import NotAnalysable, PipelineError, SeriesRejected
from dicom_node.pixels import hu_image

log = logging.getLogger(__name__)

MIN_SLICES = 20
MIN_COVERAGE_MM = 100.0
MAX_SLICE_SPACING_MM = 10.0
GAP_FACTOR = 1.5  # a step this many times the median spacing is a gap (missing slices)
IRREGULAR_CV = 0.1  # coefficient of variation of the steps above which spacing is irregular
AXIAL_MIN_COS = float(np.cos(np.deg2rad(15.0)))  # slice normal within 15 degrees of the z axis
MAX_STEP_ANGLE_DEG = 2.0  # stacking direction vs. normal: more means gantry tilt or shear
WORKING_SPACING_MM = 1.5


@dataclass(frozen=True)
class CtVolume:
    """A CT series as a Hounsfield-unit volume on the working grid.

    ``hu[k, i, j]`` is source pixel ``(i * step, j * step)`` of ``datasets[k]``; slices are in
    ascending position along ``normal``.  Directions are unit vectors in patient coordinates.
    """

    hu: np.ndarray
    step: int
    datasets: tuple[Dataset, ...]
    positions: np.ndarray  # (n, 3) ImagePositionPatient per slice, mm
    row_direction: np.ndarray  # patient direction of increasing column index
    column_direction: np.ndarray  # patient direction of increasing row index
    normal: np.ndarray
    pixel_spacing: tuple[float, float]  # source (between rows, between columns), mm
    slice_spacing: float  # mm, median step along the normal
    source_shape: tuple[int, int]  # source (rows, columns)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Working-grid voxel size (slice, row, column) in mm."""
        return (
            self.slice_spacing,
            self.pixel_spacing[0] * self.step,
            self.pixel_spacing[1] * self.step,
        )

    @property
    def voxel_ml(self) -> float:
        dz, dy, dx = self.spacing
        return dz * dy * dx / 1000.0


@dataclass(frozen=True)
class SeriesChoice:
    datasets: tuple[Dataset, ...]  # sorted along the normal
    notes: tuple[str, ...]  # why other series were not chosen, for the job log


def select_series(sources: Sequence[Dataset]) -> SeriesChoice:
    """Pick the series to analyse, or raise ``PipelineError`` saying why none qualifies."""
    groups: dict[str, list[Dataset]] = defaultdict(list)
    for ds in sources:
        groups[str(ds.get("SeriesInstanceUID", ""))].append(ds)
    accepted: list[tuple[tuple[int, int, float], tuple[Dataset, ...], str]] = []
    notes: list[str] = []
    for datasets in groups.values():
        label = _series_label(datasets)
        try:
            ordered, spacing = check_series(datasets)
        except SeriesRejected as exc:
            notes.append(f"{label}: {exc}")
            continue
        image_type = [str(v).upper() for v in datasets[0].get("ImageType", [])]
        primary = int(image_type[:2] == ["ORIGINAL", "PRIMARY"])
        accepted.append(((primary, len(ordered), -spacing), ordered, label))
    if not accepted:
        raise NotAnalysable("no analysable CT series: " + "; ".join(notes))
    accepted.sort(key=lambda item: item[0], reverse=True)
    _, best, label = accepted[0]
    notes.extend(f"{other}: another series was preferred" for _, _, other in accepted[1:])
    log.info("CT series chosen: %s", label)
    return SeriesChoice(datasets=best, notes=tuple(notes))


def _series_label(datasets: Sequence[Dataset]) -> str:
    number = datasets[0].get("SeriesNumber", "?")
    count = len(datasets)
    return f"series {number} ({count} image{'s' if count != 1 else ''})"


def check_series(datasets: Sequence[Dataset]) -> tuple[tuple[Dataset, ...], float]:
    """Validate one series' headers; return its slices sorted along the normal and the spacing."""
    unique = list({str(ds.SOPInstanceUID): ds for ds in datasets}.values())
    if len(unique) == 1:
        raise SeriesRejected("a single slice is not a volume")
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if any(keyword not in ds for ds in unique):
            raise SeriesRejected(f"{keyword} missing")
    # Every value the geometry below relies on, parsed once and named when it is broken.
    orientations, positions_list, spacings, sizes = [], [], [], []
    for ds in unique:
        orientations.append(_numbers(ds, "ImageOrientationPatient", 6))
        positions_list.append(_numbers(ds, "ImagePositionPatient", 3))
        spacings.append(_numbers(ds, "PixelSpacing", 2))
        if min(spacings[-1]) <= 0:
            raise SeriesRejected(f"slice {_uid(ds)}: PixelSpacing is not positive")
        sizes.append((_numbers(ds, "Rows", 1)[0], _numbers(ds, "Columns", 1)[0]))

    orientation = np.array(orientations[0])
    if not np.allclose(orientations, orientation, atol=1e-3):
        raise SeriesRejected("slices have different orientations")
    if len(set(sizes)) > 1:
        raise SeriesRejected("slices have different sizes")
    if not np.allclose(spacings, spacings[0], rtol=1e-3):
        raise SeriesRejected("slices have different pixel spacings")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if abs(normal[2]) < AXIAL_MIN_COS:
        plane = "sagittal" if abs(normal[0]) > abs(normal[1]) else "coronal"
        angle = np.degrees(np.arccos(min(1.0, abs(normal[2]))))
        raise SeriesRejected(f"not axial ({plane}-like, {angle:.0f} degrees from axial)")

    positions = np.array(positions_list)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        raise SeriesRejected(
            f"{int(np.sum(steps < 1e-3))} slices share a position (several acquisitions?)"
        )
    if len(unique) < MIN_SLICES:
        raise SeriesRejected(f"too few slices for a volume ({len(unique)} < {MIN_SLICES})")
    spacing = float(np.median(steps))
    if spacing > MAX_SLICE_SPACING_MM:
        raise SeriesRejected(f"slice spacing {spacing:.1f} mm exceeds {MAX_SLICE_SPACING_MM} mm")
    worst = int(np.argmax(steps))
    if steps[worst] > GAP_FACTOR * spacing:
        raise SeriesRejected(
            f"gap of {steps[worst]:.1f} mm after slice {worst + 1} "
            f"(spacing {spacing:.2f} mm): missing slices"
        )
    if np.std(steps) > IRREGULAR_CV * spacing:
        raise SeriesRejected(f"irregular slice spacing ({steps.min():.2f}-{steps.max():.2f} mm)")
    stack = positions[order[-1]] - positions[order[0]]
    cos = abs(stack @ normal) / max(float(np.linalg.norm(stack)), 1e-9)
    if np.degrees(np.arccos(min(1.0, cos))) > MAX_STEP_ANGLE_DEG:
        raise SeriesRejected("slices are not stacked along their normal (gantry tilt?)")
    coverage = along[-1] - along[0] + spacing
    if coverage < MIN_COVERAGE_MM:
        raise SeriesRejected(f"covers only {coverage:.0f} mm (< {MIN_COVERAGE_MM:.0f} mm)")
    return tuple(unique[i] for i in order), spacing


def _uid(ds: Dataset) -> str:
    value = str(ds.get("SOPInstanceUID", "") or "")
    return value if len(value) <= 64 and value.replace(".", "").isdigit() else "?"


def _numbers(ds: Dataset, keyword: str, count: int) -> list[float]:
    """``count`` finite numbers from ``keyword``; else ``SeriesRejected`` naming the slice."""
    try:
        value = ds.get(keyword)
        values = [value] if count == 1 else list(value)
        numbers = [float(v) for v in values]
    except (TypeError, ValueError, OverflowError):
        numbers = []
    if len(numbers) != count or not all(np.isfinite(numbers)):
        raise SeriesRejected(f"slice {_uid(ds)}: {keyword} is not {count} finite number(s)")
    return numbers


def assemble(
    datasets: Sequence[Dataset], working_spacing_mm: float = WORKING_SPACING_MM
) -> CtVolume:
    """Read the (already checked and sorted) slices into an int16 HU volume on the working grid."""
    first = datasets[0]
    orientation = np.array([float(v) for v in first.ImageOrientationPatient])
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    spacing_rc = (float(first.PixelSpacing[0]), float(first.PixelSpacing[1]))
    step = max(1, round(working_spacing_mm / min(spacing_rc)))
    rows, cols = int(first.Rows), int(first.Columns)
    hu = np.empty((len(datasets), -(-rows // step), -(-cols // step)), dtype=np.int16)
    for k, ds in enumerate(datasets):
        try:
            hu[k] = hu_image(ds, step)
        except Exception as exc:  # decoders raise many kinds; name the slice and the step
            raise PipelineError(
                f"slice {_uid(ds)}: pixel data cannot be decoded ({type(exc).__name__})"
            ) from exc
    along = positions @ normal
    return CtVolume(
        hu=hu,
        step=step,
        datasets=tuple(datasets),
        positions=positions,
        row_direction=row_dir,
        column_direction=col_dir,
        normal=normal,
        pixel_spacing=spacing_rc,
        slice_spacing=float(np.median(np.diff(along))),
        source_shape=(rows, cols),
    )

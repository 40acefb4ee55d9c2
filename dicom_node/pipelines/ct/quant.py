"""Lesions inside the lungs, per-lung measurements, five lobe-like regions and a severity score.

Lesions (working grid, within the lungs' bounding box; compact solid lesions are then
separated by ``ct_focal`` and not counted as involvement):

- *Consolidation*: -300..+50 HU in structures at least ~6 mm thick.  Dense voxels are opened
  in-plane with a disc of 3 mm radius; what the opening removes is thin and bright (vessels,
  bronchial walls, fissures) and is not lesion.
- *Ground-glass opacity*: -750..-300 HU, excluding a one-voxel rim around those thin dense
  structures (partial volume of a vessel looks like GGO) and around consolidation where the
  rim is darker than -500 HU (the blurred edge of a consolidation, not a halo), then opened
  with a 3x3 cross to drop noise speckle.
- The lung's surface layer (one voxel in-plane) counts only where it continues a lesion found
  inside: partial volume with the chest wall would otherwise count as GGO all around the lung.

Severity: the established CT severity score gives each of the five lobes 0-5 by the share of
the lobe involved (0 none, 1 <5%, 2 5-25%, 3 26-50%, 4 51-75%, 5 >75%; total 0-25).  "None"
is involvement below ``NONE_BELOW_PERCENT`` (0.5%), the measurement's noise floor.  We have no
fissures, so the *regions approximate the lobes*: each lung is cut across an oblique axis (45
degrees between superior and anterior, the way the oblique fissure runs) at cumulative volume
fractions matching typical lobar volumes (right 37/15/48% upper/middle/lower, left 54/46%).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dicom_node.domain import (
    CONSOLIDATION,
    GGO,
    LEFT_LUNG,
    RIGHT_LUNG,
    LungMeasurement,
    Quantification,
    RegionScore,
)
from dicom_node.pipelines.ct.series import CtVolume

GGO_HU = (-750, -300)  # low inclusive, high exclusive
CONSOLIDATION_HU = (-300, 50)  # both inclusive
THIN_RADIUS_MM = 3.0
GGO_MIN_RADIUS_MM = 2.5
CONSOLIDATION_RIM_HU = -650
# Zone involvement under this scores 0 ("none"): below it, flagged voxels are mostly partial
# volume and noise (lesion-free phantoms give 0.0-0.3% per zone).
NONE_BELOW_PERCENT = 0.5
FISSURE_ANGLE_DEG = 45.0

# (name, lung, cumulative volume fraction from inferior-posterior to superior-anterior)
REGIONS: tuple[tuple[str, int, float, float], ...] = (
    ("right lower zone", RIGHT_LUNG, 0.0, 0.48),
    ("right middle zone", RIGHT_LUNG, 0.48, 0.63),
    ("right upper zone", RIGHT_LUNG, 0.63, 1.0),
    ("left lower zone", LEFT_LUNG, 0.0, 0.46),
    ("left upper zone", LEFT_LUNG, 0.46, 1.0),
)


def severity_band(involvement_percent: float) -> int:
    """0-5 for one region (0 none, 1 <5%, 2 5-25%, 3 26-50%, 4 51-75%, 5 >75%)."""
    if involvement_percent < NONE_BELOW_PERCENT:
        return 0
    for score, upper in ((1, 5.0), (2, 25.0), (3, 50.0), (4, 75.0)):
        if involvement_percent < upper or (score > 1 and involvement_percent <= upper):
            return score
    return 5


def segment_lesions(volume: CtVolume, lungs: np.ndarray) -> np.ndarray:
    """uint8 working-grid volume: 0 no lesion, 1 GGO, 2 consolidation (inside the lungs only).

    Compact solid lesions are still consolidation here; ``ct_focal`` separates them.
    """
    lesions = np.zeros(lungs.shape, dtype=np.uint8)
    objects = ndimage.find_objects((lungs > 0).astype(np.uint8))
    if not objects or objects[0] is None:
        return lesions
    box = objects[0]
    hu = volume.hu[box]
    lung = lungs[box] > 0
    _, dy, dx = volume.spacing
    cross = ndimage.generate_binary_structure(3, 1)
    plane = np.zeros((3, 3, 3), dtype=bool)
    plane[1] = cross[1]
    inner = ndimage.binary_erosion(lung, structure=plane)

    dense = inner & (hu >= CONSOLIDATION_HU[0])
    thick = ndimage.binary_opening(dense, structure=disc(THIN_RADIUS_MM, dy, dx))
    thin = dense & ~thick
    consolidation = thick & (hu <= CONSOLIDATION_HU[1])
    # Dense pixels the opening shaved off a consolidation's border are its edge, not a vessel.
    edge = thin & dilate_box(consolidation, (0, 1, 1))
    consolidation |= edge & (hu <= CONSOLIDATION_HU[1])
    thin &= ~edge
    near_thin = dilate_box(thin, (0, 1, 1))
    near_consolidation = dilate_box(consolidation, (0, 1, 1))
    ggo = inner & (hu >= GGO_HU[0]) & (hu < GGO_HU[1]) & ~near_thin
    ggo &= ~(near_consolidation & (hu < CONSOLIDATION_RIM_HU))
    # Opened with a disc: GGO patches narrower than ~5 mm are the partial-volume halo of
    # vessels and fissures or a dependent band, not a ground-glass opacity.
    # The opening sees GGO and consolidation together: a halo around a consolidation is part
    # of one lesion however thin it is.
    ggo &= ndimage.binary_opening(ggo | consolidation, structure=disc(GGO_MIN_RADIUS_MM, dy, dx))

    # The surface layer counts where it continues a lesion (a lesion against the pleura),
    # not where it is the partial-volume rim of normal lung against the chest wall.
    surface = lung & ~inner
    grow = ndimage.binary_dilation(ggo | consolidation, structure=cross) & surface
    ggo |= grow & (hu >= GGO_HU[0]) & (hu < GGO_HU[1])
    consolidation |= grow & (hu >= CONSOLIDATION_HU[0]) & (hu <= CONSOLIDATION_HU[1])

    out = lesions[box]
    out[ggo] = GGO
    out[consolidation] = CONSOLIDATION
    return lesions


def dilate_box(mask: np.ndarray, radius_px: tuple[int, int, int]) -> np.ndarray:
    """Dilation by the box of ``2 r + 1`` voxels per axis (``r = 0``: that axis untouched),
    as separable max filters: cost independent of the box size."""
    size = tuple(2 * r + 1 for r in radius_px)
    return np.asarray(ndimage.maximum_filter(mask.view(np.uint8), size=size, mode="constant") > 0)


def disc(radius_mm: float, dy: float, dx: float) -> np.ndarray:
    """An in-plane disc structuring element (1, h, w); at least the 4-neighbour cross, so that
    a radius below the pixel size still means one pixel."""
    radius_mm = max(radius_mm, dy, dx)
    ry, rx = max(1, round(radius_mm / dy)), max(1, round(radius_mm / dx))
    y, x = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    inside = (y * dy) ** 2 + (x * dx) ** 2 <= radius_mm**2 + 1e-6
    return np.asarray(inside[None])


def quantify(volume: CtVolume, lungs: np.ndarray, lesions: np.ndarray) -> Quantification:
    """Per-lung volumes and the five regions, from one histogram over the lungs' bounding box.

    The oblique region coordinate is affine in the voxel indices; it is quantised to 1 mm bins
    and a single ``bincount`` of (bin, lung, lesion class) gives every number we report.
    """
    objects = ndimage.find_objects((lungs > 0).astype(np.uint8))
    empty = LungMeasurement(0.0, 0.0, 0.0)
    if not objects or objects[0] is None:
        return Quantification(right=empty, left=empty, regions=_score_regions(np.zeros((1, 3, 4))))
    box = objects[0]
    bins = _oblique_bins(volume, box)
    n_bins = int(bins.max()) + 1
    # Focal solid lesions (label 3) are counted apart, not as involvement.
    key = (bins * 3 + lungs[box]) * 4 + lesions[box]
    voxels = np.bincount(key.ravel(), minlength=n_bins * 12).reshape(n_bins, 3, 4)
    counts = voxels.astype(np.float64) * volume.voxel_ml
    per_lung = {
        code: LungMeasurement(
            lung_ml=float(counts[:, code].sum()),
            ggo_ml=float(counts[:, code, GGO].sum()),
            consolidation_ml=float(counts[:, code, CONSOLIDATION].sum()),
        )
        for code in (RIGHT_LUNG, LEFT_LUNG)
    }
    return Quantification(
        right=per_lung[RIGHT_LUNG], left=per_lung[LEFT_LUNG], regions=_score_regions(counts)
    )


def _oblique_bins(volume: CtVolume, box: tuple[slice, ...]) -> np.ndarray:
    """1 mm bins (int32, from 0) along the oblique axis, for the voxels of ``box``."""
    angle = np.deg2rad(FISSURE_ANGLE_DEG)
    # Superior is +z, anterior is -y in patient coordinates.
    axis = np.array([0.0, -np.sin(angle), np.cos(angle)])
    _, dy, dx = volume.spacing
    ks, is_, js = (np.arange(s.start, s.stop) for s in box)
    along_k = volume.positions[ks] @ axis
    along_i = is_ * dy * float(volume.column_direction @ axis)
    along_j = js * dx * float(volume.row_direction @ axis)
    coordinate = (
        (along_k - along_k.min()).astype(np.float32)[:, None, None]
        + (along_i - along_i.min()).astype(np.float32)[None, :, None]
        + (along_j - along_j.min()).astype(np.float32)[None, None, :]
    )
    return np.asarray(np.floor(coordinate), dtype=np.int32)


def _score_regions(counts: np.ndarray) -> tuple[RegionScore, ...]:
    """``counts[bin, lung, lesion]`` in mL -> five regions cut at cumulative volume fractions."""
    regions: list[RegionScore] = []
    for name, code, low, high in REGIONS:
        lung_hist = counts[:, code].sum(axis=1)
        lesion_hist = counts[:, code, GGO] + counts[:, code, CONSOLIDATION]
        cumulative = np.cumsum(lung_hist) / max(float(lung_hist.sum()), 1e-9)
        chosen = _fraction_bins(cumulative, low, high)
        lung_ml = float(lung_hist[chosen].sum())
        lesion_ml = float(lesion_hist[chosen].sum())
        involvement = 100.0 * lesion_ml / lung_ml if lung_ml > 0 else 0.0
        regions.append(RegionScore(name, code, lung_ml, lesion_ml, severity_band(involvement)))
    return tuple(regions)


def _fraction_bins(cumulative: np.ndarray, low: float, high: float) -> np.ndarray:
    """Bins whose midpoint of cumulative volume lies in ``[low, high)`` (the last bin included)."""
    previous = np.concatenate([[0.0], cumulative[:-1]])
    mid = 0.5 * (previous + cumulative)
    if high >= 1.0:
        return np.asarray(mid >= low)
    return np.asarray((mid >= low) & (mid < high))

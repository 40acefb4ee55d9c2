"""The pattern of the lesions and the RSNA category for COVID-19 on CT.

Categories (RSNA consensus statement, Simpson et al. 2020), decided from what is measured,
GGO and consolidation only (compact solid lesions are counted apart, see ``ct_focal``):

- **negative**: involvement below ``NEGATIVE_BELOW_PERCENT`` and no compact solid lesion;
- **typical**: involvement at least ``TYPICAL_MIN_PERCENT`` (above the 1-2 % that partial
  volume and dependent density leave on thick slices), bilateral (each lung at least
  ``BILATERAL_MIN_PERCENT``), ground glass at least ``TYPICAL_MIN_GGO_SHARE`` of the lesion
  volume, multifocal (``MIN_FOCI`` foci of ``FOCUS_MIN_ML`` or more), peripheral or lower-zone
  predominant (the share in the outer third of the lung at least ``PREDOMINANCE_POINTS``
  above the lung's own share there, or the share in the lower half of the lung volume at
  least ``LOWER_PREDOMINANT_PERCENT``), and no compact solid lesion unless the involvement is
  at least ``TYPICAL_WITH_MASS_PERCENT`` (a nodule or mass is an atypical feature; scattered
  GGO beside it is not a COVID-19 pattern);
- **atypical**: compact solid lesion(s) with no bilateral involvement beyond them, or
  consolidation without ground glass (GGO share below ``ATYPICAL_MAX_GGO_SHARE``) in a single
  focus of one lung (isolated lobar or segmental consolidation);
- **indeterminate**: everything else (GGO or consolidation that is unilateral, central, diffuse
  or without a specific distribution).

These are rules on measurements, not a reading: thresholds were set on synthetic phantoms and
one real series and are stated in the SR with the features they were applied to.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dicom_node.domain import (
    CONSOLIDATION,
    GGO,
    LEFT_LUNG,
    RIGHT_LUNG,
    CtAssessment,
    CtCategory,
    CtFeatures,
    FocalLesion,
    Quantification,
)
from dicom_node.pipelines.ct.lungs import costal_sector, midline_x, xy_planes
from dicom_node.pipelines.ct.series import CtVolume

NEGATIVE_BELOW_PERCENT = 1.0
TYPICAL_MIN_PERCENT = 3.0
TYPICAL_WITH_MASS_PERCENT = 10.0
BILATERAL_MIN_PERCENT = 1.0
FOCUS_MIN_ML = 1.0
MIN_FOCI = 2
TYPICAL_MIN_GGO_SHARE = 40.0
ATYPICAL_MAX_GGO_SHARE = 20.0
PREDOMINANCE_POINTS = 10.0
LOWER_PREDOMINANT_PERCENT = 65.0
OUTER_FRACTION = 1.0 / 3.0  # "peripheral": the outer third of the depth from the costal pleura
_DEPTH_STEP = 4  # depth is measured on every fourth pixel in-plane (~6 mm): plenty for thirds


def measure_features(
    volume: CtVolume,
    lungs: np.ndarray,
    lesions: np.ndarray,
    quantification: Quantification,
    focal: tuple[FocalLesion, ...],
) -> CtFeatures:
    total = quantification.total
    diffuse = (lesions == GGO) | (lesions == CONSOLIDATION)
    peripheral, expected = _peripheral_shares(volume, lungs, diffuse)
    right = quantification.right.involvement_percent
    left = quantification.left.involvement_percent
    return CtFeatures(
        involvement_percent=total.involvement_percent,
        right_involvement_percent=right,
        left_involvement_percent=left,
        bilateral=min(right, left) >= BILATERAL_MIN_PERCENT,
        peripheral_share_percent=peripheral,
        peripheral_expected_percent=expected,
        lower_zone_share_percent=_lower_share(volume, lungs, diffuse),
        ggo_share_percent=total.ggo_share_percent,
        consolidation_share_percent=total.consolidation_share_percent,
        foci=_foci(diffuse, volume.voxel_ml),
        focal_lesions=len(focal),
        largest_focal_lesion_mm=max((lesion.diameter_mm for lesion in focal), default=0.0),
        focal_lesion_volume_ml=sum(lesion.volume_ml for lesion in focal),
    )


def assess(f: CtFeatures) -> CtAssessment:
    """The category and the reasons, in words, from the features."""
    peripheral = f.peripheral_share_percent >= f.peripheral_expected_percent + PREDOMINANCE_POINTS
    lower = f.lower_zone_share_percent >= LOWER_PREDOMINANT_PERCENT
    focal = f"{f.focal_lesions} compact solid lesion(s), largest {f.largest_focal_lesion_mm:.0f} mm"
    if f.involvement_percent < NEGATIVE_BELOW_PERCENT:
        if f.focal_lesions:
            return CtAssessment(
                CtCategory.ATYPICAL,
                f,
                (focal, f"GGO/consolidation {f.involvement_percent:.1f}% of the lungs"),
            )
        return CtAssessment(
            CtCategory.NEGATIVE,
            f,
            (
                f"GGO/consolidation {f.involvement_percent:.1f}% of the lungs, below "
                f"{NEGATIVE_BELOW_PERCENT:.0f}%; no compact solid lesion",
            ),
        )
    where = []
    if peripheral:
        where.append("peripheral")
    if lower:
        where.append("lower-zone")
    distribution = (
        " and ".join(where) + " predominant"
        if where
        else "without peripheral or lower-zone predominance"
    )
    pattern = (
        f"{'bilateral' if f.bilateral else 'unilateral'} {distribution}, "
        f"GGO {f.ggo_share_percent:.0f}% of {f.involvement_percent:.1f}% involvement, {f.foci} foci"
    )
    enough = f.involvement_percent >= (
        TYPICAL_WITH_MASS_PERCENT if f.focal_lesions else TYPICAL_MIN_PERCENT
    )
    if (
        enough
        and f.bilateral
        and where
        and f.ggo_share_percent >= TYPICAL_MIN_GGO_SHARE
        and f.foci >= MIN_FOCI
    ):
        return CtAssessment(CtCategory.TYPICAL, f, (pattern,))
    if f.focal_lesions and not f.bilateral:
        return CtAssessment(CtCategory.ATYPICAL, f, (focal, pattern))
    if not f.bilateral and f.foci <= 1 and f.ggo_share_percent < ATYPICAL_MAX_GGO_SHARE:
        return CtAssessment(
            CtCategory.ATYPICAL, f, ("isolated consolidation without ground glass", pattern)
        )
    reasons = (pattern, focal) if f.focal_lesions else (pattern,)
    return CtAssessment(CtCategory.INDETERMINATE, f, reasons)


def _foci(diffuse: np.ndarray, voxel_ml: float) -> int:
    """3-D connected GGO/consolidation components of ``FOCUS_MIN_ML`` or more."""
    components, count = ndimage.label(diffuse)
    if count == 0:
        return 0
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:] * voxel_ml
    return int(np.count_nonzero(sizes >= FOCUS_MIN_ML))


def _peripheral_shares(
    volume: CtVolume, lungs: np.ndarray, diffuse: np.ndarray
) -> tuple[float, float]:
    """(percent of the lesion volume, percent of the lung volume) in the outer third.

    Depth is the in-plane distance to the costal pleura: the mediastinal side does not count
    as pleura (a perihilar lesion is central however close it is to the mediastinum), so the
    medial sector outside the lung is treated as lung when measuring it.  Thirds are relative
    to the deepest point of that lung in that slice.
    """
    s = _DEPTH_STEP
    small = lungs[:, ::s, ::s]
    lesion = diffuse[:, ::s, ::s]
    x_full, y_full = xy_planes(volume)
    midline = midline_x(volume.hu, x_full)
    x, y = x_full[::s, ::s], y_full[::s, ::s]
    _, dy, dx = volume.spacing
    outer = np.zeros(small.shape, dtype=bool)
    for code in (RIGHT_LUNG, LEFT_LUNG):
        lung = small == code
        where = ndimage.find_objects(lung.view(np.uint8))
        if not where or where[0] is None:
            continue
        # The lung's box and a margin of one pixel: the distance is to the nearest non-lung.
        box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in where[0])
        sub = lung[box]
        medial_outside = ~costal_sector(sub, x[box[1:]], y[box[1:]], midline) & (small[box] == 0)
        depth = np.zeros(sub.shape, dtype=np.float64)
        filled = sub | medial_outside
        for k in np.flatnonzero(sub.any(axis=(1, 2))):  # 2-D per slice: in-plane depth
            depth[k] = ndimage.distance_transform_edt(filled[k], sampling=(dy * s, dx * s))
        deepest = np.max(np.where(sub, depth, 0.0), axis=(1, 2), keepdims=True)
        outer[box] |= sub & (depth <= OUTER_FRACTION * np.maximum(deepest, 1e-6))
    lung_count = np.count_nonzero(small)
    lesion_count = np.count_nonzero(lesion)
    expected = 100.0 * np.count_nonzero(outer) / lung_count if lung_count else 0.0
    share = 100.0 * np.count_nonzero(lesion & outer) / lesion_count if lesion_count else 0.0
    return float(share), float(expected)


def _lower_share(volume: CtVolume, lungs: np.ndarray, diffuse: np.ndarray) -> float:
    """Percent of the lesion volume in the lower half of the lung volume (along the body axis)."""
    lung_per_slice = np.count_nonzero(lungs, axis=(1, 2)).astype(np.float64)
    lesion_per_slice = np.count_nonzero(diffuse, axis=(1, 2)).astype(np.float64)
    if lesion_per_slice.sum() == 0 or lung_per_slice.sum() == 0:
        return 0.0
    order = np.argsort(volume.positions[:, 2])  # inferior first
    cumulative = np.cumsum(lung_per_slice[order]) / lung_per_slice.sum()
    midpoint = cumulative - 0.5 * lung_per_slice[order] / lung_per_slice.sum()
    lower = order[midpoint < 0.5]
    return 100.0 * float(lesion_per_slice[lower].sum() / lesion_per_slice.sum())

"""Compact solid lesions (nodules, masses) and hilar vessels, taken out of the consolidation.

A nodule or mass is not COVID-19 consolidation, and a vessel entering at the hilum is not a
lesion at all.  ``segment_lesions`` labels all of them consolidation (dense, at least ~6 mm
thick); this module decides, per 3-D connected dense component:

- **focal solid lesion** (label ``FOCAL``): it has a solid core at least
  ``2 * FOCAL_CORE_RADIUS_MM`` thick in-plane of ``FOCAL_MIN_CORE_ML`` or more, it lies in the
  lung (``FOCAL_MIN_LUNG_SHELL`` of the shell around it is lung, so not a mediastinal structure
  bulging into the mask), and it is *not embedded in ground glass*: less than
  ``EMBEDDED_GGO_SHARE`` of the shell's lung part is GGO.  Pneumonia consolidation sits
  inside GGO; a tumour has at most a partial halo.  GGO within ``HALO_MM`` of the lesion is
  its halo and is labelled with it, so the halo is not counted as diffuse involvement
  either.  A component that reaches the lung's medial surface (within ``MEDIAL_BAND_MM`` of
  where the lung meets the mediastinum) needs a core of ``HILAR_MIN_CORE_ML``: hilar vessels
  are solid too.
- **vessel**: otherwise, if it reaches the medial surface (hilar vessels), or if it is a
  branching tree (less than ``VESSEL_MAX_CORE_SHARE`` of it is 10 mm core) with little GGO
  around it (under ``VESSEL_MAX_GGO_SHARE`` of the shell): removed, with the GGO on its rim.
- **consolidation**: everything else stays.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dicom_node.domain import CONSOLIDATION, FOCAL, GGO, NO_LESION, FocalLesion
from dicom_node.pipelines.ct.lungs import costal_sector, midline_x, xy_planes
from dicom_node.pipelines.ct.quant import dilate_box
from dicom_node.pipelines.ct.series import CtVolume

FOCAL_CORE_RADIUS_MM = 5.0  # the solid core is at least 10 mm across
FOCAL_MIN_CORE_ML = 0.4
HILAR_MIN_CORE_ML = 4.0  # a core this large (about 2 cm across) at the hilum is a mass
FOCAL_MIN_LUNG_SHELL = 0.5
EMBEDDED_GGO_SHARE = 0.6  # a partial halo (a tumour) leaves more of the shell aerated
SHELL_MM = 3.0
HALO_MM = 15.0
MEDIAL_BAND_MM = 4.0
VESSEL_MAX_CORE_SHARE = 0.1  # a vessel tree is mostly thinner than the 10 mm core
VESSEL_MAX_GGO_SHARE = 0.3
_RING = np.ones((1, 3, 3), dtype=bool)


def separate_focal_lesions(
    volume: CtVolume, lungs: np.ndarray, lesions: np.ndarray
) -> tuple[FocalLesion, ...]:
    """Relabel focal solid lesions ``FOCAL`` and clear hilar vessels, in ``lesions`` in place."""
    objects = ndimage.find_objects((lungs > 0).astype(np.uint8))
    if not objects or objects[0] is None:
        return ()
    box = objects[0]
    sub, lung_labels = lesions[box], lungs[box]
    dense = sub == CONSOLIDATION
    components, count = ndimage.label(dense)
    if count == 0:
        return ()
    _, dy, dx = volume.spacing
    core = _square_opening(dense, FOCAL_CORE_RADIUS_MM, dy, dx)
    core_ml = np.bincount(components[core], minlength=count + 1) * volume.voxel_ml
    medial = _medial_band(volume, lung_labels, box, dy)
    reaches_medial = np.zeros(count + 1, dtype=bool)
    reaches_medial[np.unique(components[medial & dense])] = True
    shell_px = (0, max(1, round(SHELL_MM / dy)), max(1, round(SHELL_MM / dx)))

    volume_ml = np.bincount(components.ravel(), minlength=count + 1) * volume.voxel_ml
    focal: list[int] = []
    vessels: list[int] = []
    for c, where in enumerate(ndimage.find_objects(components), start=1):
        if where is None:
            continue
        window = _pad(where, shell_px, components.shape)
        mask = components[window] == c
        shell = dilate_box(mask, shell_px) & ~mask
        lung_shell = shell & (lung_labels[window] > 0)
        in_lung = float(np.mean(lung_labels[window][shell] > 0)) if shell.any() else 0.0
        ggo_share = float(np.mean(sub[window][lung_shell] == GGO)) if lung_shell.any() else 0.0
        # At the hilum, vessels and bronchial walls have solid cores too: only a large core
        # is a mass there.
        needed = HILAR_MIN_CORE_ML if reaches_medial[c] else FOCAL_MIN_CORE_ML
        if core_ml[c] >= needed and in_lung >= FOCAL_MIN_LUNG_SHELL:
            if ggo_share < EMBEDDED_GGO_SHARE:
                focal.append(c)
            continue
        branching = core_ml[c] < VESSEL_MAX_CORE_SHARE * volume_ml[c]
        if reaches_medial[c] or (branching and ggo_share < VESSEL_MAX_GGO_SHARE):
            vessels.append(c)

    if vessels:
        tree = np.isin(components, vessels)
        rim = dilate_box(tree, (0, 1, 1)) & (sub == GGO)
        sub[tree | rim] = NO_LESION
    found: list[FocalLesion] = []
    dz = volume.spacing[0]
    halo_px = (
        max(1, round(HALO_MM / dz)),
        max(1, round(HALO_MM / dy)),
        max(1, round(HALO_MM / dx)),
    )
    for c in focal:
        solid = components == c
        found.append(_describe(volume, solid, lung_labels, box[0].start))
        near = dilate_box(solid, halo_px)
        sub[solid | (near & (sub == GGO))] = FOCAL
    return tuple(sorted(found, key=lambda lesion: -lesion.volume_ml))


def _describe(
    volume: CtVolume, solid: np.ndarray, lung_labels: np.ndarray, first_slice: int
) -> FocalLesion:
    """Volume, largest in-plane diameter (four projection directions) and lung of a lesion."""
    _, dy, dx = volume.spacing
    ks, ii, jj = np.nonzero(solid)
    diameter = 0.0
    for k in np.unique(ks):
        on = ks == k
        points = np.stack([ii[on] * dy, jj[on] * dx], axis=1)
        for angle in (0.0, 45.0, 90.0, 135.0):
            u = np.array([np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))])
            projection = points @ u
            diameter = max(diameter, float(projection.max() - projection.min()) + dy)
    sides = np.bincount(lung_labels[solid], minlength=3)
    return FocalLesion(
        volume_ml=float(ks.size) * volume.voxel_ml,
        diameter_mm=diameter,
        lung=int(np.argmax(sides[1:]) + 1),
        centre_slice=first_slice + int(np.median(ks)),
    )


def _medial_band(
    volume: CtVolume, lung_labels: np.ndarray, box: tuple[slice, ...], dy: float
) -> np.ndarray:
    """Lung voxels within ``MEDIAL_BAND_MM`` of the lung's surface in the medial sector."""
    x_full, y_full = xy_planes(volume)
    midline = midline_x(volume.hu, x_full)
    x, y = x_full[box[1], box[2]], y_full[box[1], box[2]]
    band = np.zeros(lung_labels.shape, dtype=bool)
    for code in (1, 2):
        lung = lung_labels == code
        if not lung.any():
            continue
        eroded = ndimage.minimum_filter(lung.view(np.uint8), size=(1, 3, 3), mode="nearest")
        band |= lung & (eroded == 0) & ~costal_sector(lung, x, y, midline)
    steps = max(1, round(MEDIAL_BAND_MM / dy))
    return np.asarray(dilate_box(band, (0, steps, steps)) & (lung_labels > 0))


def _square_opening(mask: np.ndarray, radius_mm: float, dy: float, dx: float) -> np.ndarray:
    """In-plane opening by the square of the same area as a disc of ``radius_mm``: separable
    min/max filters, many times faster than a binary opening by the disc."""
    side = np.sqrt(np.pi) * radius_mm
    size = (1, max(1, round(side / dy)), max(1, round(side / dx)))
    eroded = ndimage.minimum_filter(mask.view(np.uint8), size=size, mode="constant", cval=0)
    return np.asarray(ndimage.maximum_filter(eroded, size=size, mode="constant", cval=0) > 0)


def _pad(
    where: tuple[slice, ...], pad: tuple[int, int, int], shape: tuple[int, ...]
) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - p), min(n, s.stop + p))
        for s, p, n in zip(where, pad, shape, strict=True)
    )

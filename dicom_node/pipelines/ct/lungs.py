"""Lung segmentation on Hounsfield units, on the working grid of a ``CtVolume``.

Steps (each a handful of whole-volume ``scipy.ndimage`` calls, no per-slice Python loops on the
bulk of the data):

1. Air (< -400 HU) not connected to the image's side borders is inside the body: lungs,
   airways, bowel gas.  Outside air is what one 3-D labelling connects to the four side faces.
2. The trachea is found as a round air region near the midline in the most superior slices and
   grown in 3-D at -950 HU (stricter thresholds if the growth leaks into the lungs); the airway
   and a one-voxel rim are removed.
3. The remaining large air components whose mean HU is lung-like (not bowel gas) are assigned to
   the right or left lung by their centroid's side of the midline; a component crossing the
   midline (lungs touching at the anterior junction) is split at the mid-sagittal plane.
4. Each lung is closed with a small 3-D box (fills vessels) and in-plane with a box of about
   36 mm so that dense lesions against the pleura count as lung; then its 3-D holes (enclosed
   lesions) are filled.  The large closing skips the medial sector (60 degrees either side of
   the direction to the midline): the heart and hila indent the lung there and would otherwise
   be counted as lesion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dicom_node.domain import BACKGROUND, LEFT_LUNG, RIGHT_LUNG
from dicom_node.pipelines.ct.series import CtVolume

AIR_HU = -400
AIRWAY_HU = (-990, -975, -960, -945, -930, -915, -900)  # tried in this order
MAX_AIRWAY_ML = 250.0
AIRWAY_HALF_WIDTH_MM = 90.0
TRACHEA_AREA_MM2 = (80.0, 900.0)
TRACHEA_MAX_OFFSET_MM = 30.0
TRACHEA_SEARCH_MM = 60.0
MIN_COMPONENT_ML = 20.0
MIN_COMPONENT_FRACTION = 0.02  # of the largest lung component
GAS_MEAN_HU = -960  # lung parenchyma averages well above this, bowel and stomach gas below
CLOSING_MM = 18.0  # half-size of the in-plane costal closing box: dents up to ~36 mm across
SMALL_CLOSING_MM = 4.0  # half-size of the 3-D closing that fills vessels


@dataclass(frozen=True)
class LungSegmentation:
    """``labels``: uint8 working-grid volume, 0 background, 1 right lung, 2 left lung."""

    labels: np.ndarray
    airway: np.ndarray  # bool, the grown airway (trachea and bronchi)
    notes: tuple[str, ...]

    def volume_ml(self, voxel_ml: float, label: int | None = None) -> float:
        mask = self.labels > 0 if label is None else self.labels == label
        return float(np.count_nonzero(mask)) * voxel_ml


def segment_lungs(volume: CtVolume) -> LungSegmentation:
    hu_full = volume.hu
    notes: list[str] = []
    labels = np.zeros(hu_full.shape, dtype=np.uint8)
    airway_full = np.zeros(hu_full.shape, dtype=bool)
    internal, box = _internal_air(hu_full)
    if box is None:
        return LungSegmentation(
            labels=labels, airway=airway_full, notes=("no air inside the body",)
        )
    hu = hu_full[box]
    x_full, y_full = xy_planes(volume)
    x_mm, y_mm = x_full[box[1:]], y_full[box[1:]]
    midline = midline_x(hu_full, x_full)
    airway = _grow_airway(volume, hu, internal, x_mm, midline, notes)
    rim = _dilate_in_box(airway) if airway is not None else None
    if rim is not None:
        internal &= ~rim

    sub = _lung_components(volume, hu, internal, x_mm, midline, notes)
    del internal
    for code in (RIGHT_LUNG, LEFT_LUNG):
        _close_and_fill(volume, sub, code, x_mm, y_mm, midline)
    if airway is not None and rim is not None:
        sub[rim] = BACKGROUND  # bronchi inside the lungs were filled as holes
        airway_full[box] = airway
    labels[box] = sub
    return LungSegmentation(labels=labels, airway=airway_full, notes=tuple(notes))


def _internal_air(hu: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice, slice] | None]:
    """Air not connected to the side faces of the volume, cropped to its bounding box."""
    air = hu < AIR_HU
    components, count = ndimage.label(air)
    del air
    faces = (components[:, 0, :], components[:, -1, :], components[:, :, 0], components[:, :, -1])
    inside = np.ones(count + 1, dtype=bool)
    inside[np.unique(np.concatenate([f.ravel() for f in faces]))] = False
    inside[0] = False
    internal = inside[components]
    del components
    objects = ndimage.find_objects(internal.astype(np.uint8))
    if not objects or objects[0] is None:
        return internal, None
    box = objects[0]
    return internal[box].copy(), (box[0], box[1], box[2])


def _dilate_in_box(mask: np.ndarray) -> np.ndarray:
    """One-voxel (6-connected) dilation computed only around the mask's bounding box."""
    out = np.zeros_like(mask)
    objects = ndimage.find_objects(mask.astype(np.uint8))
    if not objects or objects[0] is None:
        return out
    box = _pad_box(objects[0], (1, 1, 1), mask.shape)
    out[box] = ndimage.binary_dilation(mask[box])
    return out


def xy_planes(volume: CtVolume) -> tuple[np.ndarray, np.ndarray]:
    """Patient x and y (mm; +x is the patient's left, +y posterior) of a slice's pixels."""
    _, dy, dx = volume.spacing
    rows, cols = volume.hu.shape[1:]
    i = np.arange(rows, dtype=np.float32)[:, None] * dy
    j = np.arange(cols, dtype=np.float32)[None, :] * dx
    planes = []
    for axis in (0, 1):
        origin = float(np.median(volume.positions[:, axis]))
        plane = (
            origin
            + i * float(volume.column_direction[axis])
            + j * float(volume.row_direction[axis])
        )
        planes.append(np.asarray(plane, dtype=np.float32))
    return planes[0], planes[1]


def midline_x(hu: np.ndarray, x_mm: np.ndarray) -> float:
    """Patient x of the body's centre (mean x of soft-tissue-or-denser pixels)."""
    step = max(1, hu.shape[0] // 16)
    body = hu[::step] > -500
    weights = body.sum(axis=0)
    return float((weights * x_mm).sum() / max(1, weights.sum()))


def _grow_airway(
    volume: CtVolume,
    hu: np.ndarray,
    internal: np.ndarray,
    x_mm: np.ndarray,
    midline: float,
    notes: list[str],
) -> np.ndarray | None:
    """The trachea and main bronchi: grown from a seed in the trachea at rising thresholds.

    The lumen's HU depends on slice thickness and kernel (about -1000 on thin slices, -930 to
    -970 on 5 mm ones), so no single threshold fits.  Growth starts strict and is relaxed step
    by step; the last growth before it leaks into the lungs (a jump past ``MAX_AIRWAY_ML``)
    is the airway.
    """
    seed = _trachea_seed(volume, hu, internal, x_mm, midline)
    if seed is None:
        notes.append("trachea not found in the upper slices: airways not removed")
        return None
    k, i, j = seed
    # Grown within AIRWAY_HALF_WIDTH_MM of the midline: the trachea and main bronchi lie there,
    # and a leak into a lung is still far beyond MAX_AIRWAY_ML inside that band.
    columns = np.flatnonzero(np.any(np.abs(x_mm - midline) <= AIRWAY_HALF_WIDTH_MM, axis=0))
    band = (slice(None), slice(None), slice(int(columns[0]), int(columns[-1]) + 1))
    j_band = j - int(columns[0])
    best: np.ndarray | None = None
    for threshold in AIRWAY_HU:
        if hu[k, i, j] >= threshold:
            continue
        grown, _ = ndimage.label(internal[band] & (hu[band] < threshold))
        airway: np.ndarray = grown == grown[k, i, j_band]
        del grown
        if np.count_nonzero(airway) * volume.voxel_ml > MAX_AIRWAY_ML:
            break
        best = airway
    if best is None:
        notes.append("airway growth leaked into the lungs at every threshold: airways not removed")
        return None
    full = np.zeros(internal.shape, dtype=bool)
    full[band] = best
    return full


def _trachea_seed(
    volume: CtVolume, hu: np.ndarray, internal: np.ndarray, x_mm: np.ndarray, midline: float
) -> tuple[int, int, int] | None:
    """The darkest voxel of the trachea: the largest internal air region of tracheal size near
    the midline, in the upper slices (the topmost one skipped when it is partial volume)."""
    dz, dy, dx = volume.spacing
    superior_last = volume.normal[2] > 0  # slices ascend along the normal
    n = internal.shape[0]
    count = min(n, max(1, round(TRACHEA_SEARCH_MM / dz)))
    order = range(n - 1, n - 1 - count, -1) if superior_last else range(count)
    low, high = (a / (dy * dx) for a in TRACHEA_AREA_MM2)
    for k in order:
        regions, found = ndimage.label(internal[k])
        if not found:
            continue
        areas = np.bincount(regions.ravel(), minlength=found + 1)
        sums = np.bincount(regions.ravel(), weights=x_mm.ravel(), minlength=found + 1)
        best, best_area = 0, 0
        for r in range(1, found + 1):
            centre = sums[r] / areas[r]
            near_midline = abs(centre - midline) <= TRACHEA_MAX_OFFSET_MM
            if low <= areas[r] <= high and near_midline and areas[r] > best_area:
                best, best_area = r, int(areas[r])
        if best:
            ii, jj = np.nonzero(regions == best)
            pick = int(np.argmin(hu[k, ii, jj]))
            if hu[k, ii[pick], jj[pick]] < AIRWAY_HU[-1]:
                return k, int(ii[pick]), int(jj[pick])
    return None


def _lung_components(
    volume: CtVolume,
    hu: np.ndarray,
    internal: np.ndarray,
    x_mm: np.ndarray,
    midline: float,
    notes: list[str],
) -> np.ndarray:
    """Large, lung-like internal air components labelled right or left."""
    components, count = ndimage.label(internal)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    if count == 0:
        return labels
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    sizes[0] = 0
    keep_min = max(MIN_COMPONENT_FRACTION * sizes.max(), MIN_COMPONENT_ML / volume.voxel_ml)
    objects = ndimage.find_objects(components)
    lut = np.zeros(count + 1, dtype=np.uint8)
    split: list[int] = []
    dropped_gas = 0
    for c in np.flatnonzero(sizes >= keep_min):
        box = objects[c - 1]
        mask = components[box] == c
        if float(hu[box][mask].mean()) < GAS_MEAN_HU:
            dropped_gas += 1
            continue
        xs = np.broadcast_to(x_mm[box[1], box[2]], mask.shape)[mask]
        fraction_right = float(np.count_nonzero(xs < midline)) / xs.size
        if 0.15 < fraction_right < 0.85:
            split.append(int(c))
            lut[c] = RIGHT_LUNG  # provisional; the left part is relabelled below
        else:
            # Patient right is -x in DICOM patient coordinates.
            lut[c] = RIGHT_LUNG if fraction_right >= 0.5 else LEFT_LUNG
    labels = lut[components]
    if split:
        notes.append("lungs touch across the midline: split at the mid-sagittal plane")
        joined = np.isin(components, split)
        labels[joined & np.broadcast_to(x_mm >= midline, hu.shape)] = LEFT_LUNG
    if dropped_gas:
        notes.append(f"{dropped_gas} gas-filled region(s) outside the lungs ignored")
    return np.asarray(labels)


def _close_and_fill(
    volume: CtVolume,
    labels: np.ndarray,
    code: int,
    x_mm: np.ndarray,
    y_mm: np.ndarray,
    midline: float,
) -> None:
    """Close the lung and fill its holes, in place, within its bounding box.

    A small 3-D closing everywhere fills vessels (so that lesions around them become enclosed
    holes); a large in-plane closing fills dents cut by pleural lesions, except in the medial
    sector where the heart and hila indent the lung.  Only in-plane, because closing across
    slices would fill the top of the diaphragm's dome.
    """
    dz, dy, dx = volume.spacing
    small = tuple(2 * max(1, round(SMALL_CLOSING_MM / s)) + 1 for s in (dz, dy, dx))
    large = (1, *(2 * max(1, round(CLOSING_MM / s)) + 1 for s in (dy, dx)))
    objects = ndimage.find_objects((labels == code).astype(np.uint8))
    if not objects or objects[0] is None:
        return
    box = _pad_box(objects[0], (small[0], large[1], large[2]), labels.shape)
    sub = labels[box]
    lung = sub == code
    free = sub == 0
    costal = costal_sector(lung, x_mm[box[1], box[2]], y_mm[box[1], box[2]], midline)
    added = _box_closing(lung, small) | (_box_closing(lung, large) & costal)
    added &= free & ~lung
    filled = _fill_holes(lung | added)
    sub[filled & free] = code


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """3-D hole filling: background components not touching the box's faces become foreground.

    Same result as ``ndimage.binary_fill_holes`` but one labelling instead of an iterated
    dilation, several times faster on large boxes.
    """
    background, _ = ndimage.label(~mask)
    border = np.unique(
        np.concatenate(
            [
                face.ravel()
                for face in (
                    background[0],
                    background[-1],
                    background[:, 0],
                    background[:, -1],
                    background[:, :, 0],
                    background[:, :, -1],
                )
            ]
        )
    )
    return np.asarray(mask | ~np.isin(background, border))


def costal_sector(lung: np.ndarray, x: np.ndarray, y: np.ndarray, midline: float) -> np.ndarray:
    """Pixels outside the medial sector (within 60 degrees of the direction to the midline)
    as seen from the lung's centroid in each slice."""
    counts = np.maximum(lung.sum(axis=(1, 2)), 1)
    flat = lung.reshape(lung.shape[0], -1).view(np.uint8).astype(np.float32)
    cx = (flat @ x.ravel().astype(np.float32)) / counts
    cy = (flat @ y.ravel().astype(np.float32)) / counts
    vx = (x[None] - cx[:, None, None]) * np.sign(midline - cx)[:, None, None]
    vy = y[None] - cy[:, None, None]
    # medial when the angle to the medial direction is under 60 degrees: vx > 0, 3 vx^2 > vy^2
    return np.asarray((vx <= 0) | (3.0 * vx * vx <= vy * vy))


def _box_closing(mask: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Binary closing with a box, as separable max/min filters (cost independent of size).

    Padded with background by half the box so that the array's faces act as background
    rather than as mirrors (scipy's default boundary mode reflects).
    """
    half = [(n // 2, n // 2) for n in size]
    padded = np.pad(mask.view(np.uint8), half)
    dilated = ndimage.maximum_filter(padded, size=size, mode="constant", cval=0)
    closed = ndimage.minimum_filter(dilated, size=size, mode="constant", cval=1)
    inner = tuple(slice(h, h + n) for (h, _), n in zip(half, mask.shape, strict=True))
    return np.asarray(closed[inner].view(bool))


def _pad_box(
    box: tuple[slice, ...], pad: tuple[int, int, int], shape: tuple[int, ...]
) -> tuple[slice, slice, slice]:
    return tuple(  # type: ignore[return-value]
        slice(max(0, s.start - p), min(n, s.stop + p))
        for s, p, n in zip(box, pad, shape, strict=True)
    )

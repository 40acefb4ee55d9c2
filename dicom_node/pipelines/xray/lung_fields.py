"""Lung fields of a frontal chest radiograph: the shipped ``lung_segmentation`` model.

The model (a small U-Net, ``training/train_lungseg.py``) maps a grey ``S x S`` input to a lung
probability map.  :class:`LungSegmenter` resizes that map back to the source image, thresholds it
at the card's threshold, keeps the largest one or two regions and fills their holes.  The result
(:class:`LungFields`) says whether it looks like the two lung fields of a frontal chest X-ray
(``problem`` is None) or why not, so callers can refuse images that are no such radiograph.

The ``problem`` rules' limits are the named constants below; the model card lists the values
measured on radiographs of every source and on non-radiographs that they were chosen from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import measure

from dicom_node.pipelines.model_store import find_artefact, load_keras_model
from dicom_node.pipelines.xray.preprocessing import mask_box, to_model_input

__all__ = [
    "DEFAULT_THRESHOLD",
    "MAX_AREA_FRACTION",
    "MIN_AREA_FRACTION",
    "MIN_CENTRE_DISTANCE",
    "MIN_COMPONENT_FRACTION",
    "MIN_CONFIDENCE",
    "MIN_ROW_OVERLAP",
    "MIN_SIZE_RATIO",
    "MODEL_NAME",
    "WORK_SIDE",
    "LungFields",
    "LungSegmenter",
    "judge",
    "lung_fields_from_probabilities",
    "segmentation_input",
]

MODEL_NAME = "lung_segmentation"

# Regions smaller than this fraction of the image are noise, not a lung.
MIN_COMPONENT_FRACTION = 0.005
# Both lungs together, as a fraction of the image (frontal radiographs of all sources measured
# 0.12-0.49 on the train/val images; see the model card).
MIN_AREA_FRACTION = 0.06
MAX_AREA_FRACTION = 0.65
# The smaller lung field as a fraction of the larger one (measured >= 0.35 on radiographs).
MIN_SIZE_RATIO = 0.2
# The two fields lie side by side: their centres at least this fraction of the width apart, and
# their row ranges overlapping by at least this fraction of the shorter one.
MIN_CENTRE_DISTANCE = 0.15
MIN_ROW_OVERLAP = 0.5
# Mean of max(p, 1 - p): below this the map is too blurred to trust.
MIN_CONFIDENCE = 0.9
DEFAULT_THRESHOLD = 0.5
# Regions are found on a grid of at most this many pixels per side, then the mask is scaled to
# the source: a 2000 px radiograph would otherwise spend ~0.4 s labelling and filling at full
# size, and the model's map (S x S) holds no finer detail anyway.
WORK_SIDE = 512


def segmentation_input(display: np.ndarray, size: int) -> np.ndarray:
    """Display image (float [0, 1], MONOCHROME2, any shape) -> model input ``(size, size, 1)``.

    The node's shared preprocessing: squashed to a square, robust contrast stretch.
    """
    return to_model_input(display, size)


@dataclass(frozen=True)
class LungFields:
    """Lung fields found in one image (source pixel coordinates)."""

    mask: np.ndarray
    box: tuple[int, int, int, int] | None  # (row0, row1, col0, col1), half-open
    area_fraction: float
    components: int
    confidence: float
    problem: str | None

    def outline(self) -> list[np.ndarray]:
        """One closed polygon (N, 2) of (column, row) per component, first point repeated last."""
        labels, count = ndimage.label(self.mask)
        rows, cols = self.mask.shape
        polygons = []
        for index in range(1, count + 1):
            # Padding closes contours that touch the border; the level 0.5 lies between pixels.
            padded = np.pad(labels == index, 1).astype(np.float32)
            contours = measure.find_contours(padded, 0.5)  # type: ignore[no-untyped-call,unused-ignore]
            contour = max(contours, key=len) - 1.0
            contour[:, 0] = np.clip(contour[:, 0], 0, rows - 1)
            contour[:, 1] = np.clip(contour[:, 1], 0, cols - 1)
            polygon = contour[:, ::-1]
            if not np.array_equal(polygon[0], polygon[-1]):
                polygon = np.vstack([polygon, polygon[:1]])
            polygons.append(polygon)
        return polygons


def _resize_to(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(prob.astype(np.float32, copy=False), mode="F")
    return np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _scale_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A boolean mask scaled up to ``shape`` (nearest: 15x cheaper than a float bilinear
    resize of a detector-size image; the work grid is finer than the model's map anyway)."""
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (shape[1], shape[0]), Image.Resampling.NEAREST
    )
    return np.asarray(image) >= 128


def _work_shape(shape: tuple[int, int]) -> tuple[int, int]:
    scale = min(1.0, WORK_SIDE / max(shape))
    return (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))


def _largest_regions(mask: np.ndarray, keep: int = 2) -> list[np.ndarray]:
    labels, count = ndimage.label(mask)
    if count == 0:
        return []
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    order = np.argsort(sizes)[::-1][:keep]
    min_size = MIN_COMPONENT_FRACTION * mask.size
    slices = ndimage.find_objects(labels)
    regions = []
    for i in order:
        if sizes[i] < min_size:
            continue
        # Holes are filled inside the region's box only: a quarter of the work of the image.
        region = np.zeros(mask.shape, bool)
        box = slices[i]
        region[box] = ndimage.binary_fill_holes(labels[box] == i + 1)
        regions.append(region)
    return regions


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    found = ndimage.find_objects(mask.astype(np.int32))
    if not found or found[0] is None:
        return None
    rows, cols = found[0]
    return (int(rows.start), int(rows.stop), int(cols.start), int(cols.stop))


def _side_by_side(regions: Sequence[np.ndarray]) -> bool:
    boxes = [_box(r) for r in regions]
    (r0a, r1a, c0a, c1a), (r0b, r1b, c0b, c1b) = [b for b in boxes if b is not None]
    width = regions[0].shape[1]
    centre_distance = abs((c0a + c1a) - (c0b + c1b)) / 2 / width
    overlap = max(0, min(r1a, r1b) - max(r0a, r0b)) / max(1, min(r1a - r0a, r1b - r0b))
    return centre_distance >= MIN_CENTRE_DISTANCE and overlap >= MIN_ROW_OVERLAP


def judge(regions: Sequence[np.ndarray], area_fraction: float, confidence: float) -> str | None:
    """None if the regions look like the two lung fields of a frontal chest radiograph."""
    percent = f"{100 * area_fraction:.0f}% of the image"
    if not regions:
        return "no lung fields found"
    if len(regions) == 1:
        return f"lung fields implausible (one region, {percent})"
    if not MIN_AREA_FRACTION <= area_fraction <= MAX_AREA_FRACTION:
        return f"lung fields implausible (two regions, {percent})"
    small, large = sorted(float(r.sum()) for r in regions)
    if small / large < MIN_SIZE_RATIO:
        return f"lung fields implausible (one field {100 * small / large:.0f}% of the other)"
    if not _side_by_side(regions):
        return "lung fields implausible (the two regions are not side by side)"
    if confidence < MIN_CONFIDENCE:
        return f"lung segmentation uncertain (confidence {confidence:.2f})"
    return None


def lung_fields_from_probabilities(
    prob: np.ndarray, shape: tuple[int, int], threshold: float = DEFAULT_THRESHOLD
) -> LungFields:
    """Post-process one ``(S, S)`` probability map for a source image of ``shape``."""
    confidence = float(np.mean(np.maximum(prob, 1.0 - prob)))
    work = _work_shape(shape)
    regions = _largest_regions(_resize_to(prob, work) >= threshold)
    work_mask = np.logical_or.reduce(regions) if regions else np.zeros(work, bool)
    area_fraction = float(work_mask.mean())
    mask = work_mask if work == shape else _scale_mask(work_mask, shape)
    return LungFields(
        mask=mask,
        box=mask_box(mask),
        area_fraction=area_fraction,
        components=len(regions),
        confidence=confidence,
        problem=judge(regions, area_fraction, confidence),
    )


class LungSegmenter:
    """The shipped lung segmentation model with its card's input size and threshold."""

    def __init__(self, model: Any, size: int, threshold: float) -> None:
        import tensorflow as tf

        self.model = model
        self.size = size
        self.threshold = threshold
        self._predict = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec((None, size, size, 1), tf.float32)],
            reduce_retracing=True,
        )

    @classmethod
    def load(cls, models_dir: Path | None = None, version: str | None = None) -> LungSegmenter:
        artefact = find_artefact(MODEL_NAME, version=version, models_dir=models_dir)
        card = artefact.card
        metrics = card.metrics or {}
        threshold = float(metrics.get("threshold", {}).get("value", DEFAULT_THRESHOLD))
        return cls(load_keras_model(artefact), card.input.size, threshold)

    def warm_up(self) -> None:
        """Trace and run the graph once so the first real call is fast."""
        self.probabilities([np.zeros((self.size, self.size), np.float32)])

    def probabilities(self, displays: Sequence[np.ndarray]) -> np.ndarray:
        """Raw lung probability maps ``(n, S, S)`` of display images, one batched call."""
        if not displays:
            return np.zeros((0, self.size, self.size), np.float32)
        batch = np.stack([segmentation_input(d, self.size) for d in displays])
        return np.asarray(self._predict(batch))[..., 0]

    def segment(self, displays: Sequence[np.ndarray]) -> list[LungFields]:
        """Lung fields of each display image (float [0, 1], MONOCHROME2, any 2-D shape)."""
        probs = self.probabilities(displays)
        return [
            lung_fields_from_probabilities(p, (d.shape[0], d.shape[1]), self.threshold)
            for p, d in zip(probs, displays, strict=True)
        ]

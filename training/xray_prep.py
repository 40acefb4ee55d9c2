"""X-ray training inputs: decode, find the lung fields, crop, augment, pool backbone features.

Every image goes through the node's own code: ``read_image`` (decoding), the shipped lung
segmentation (``dicom_node.pipelines.xray.lung_fields``) and ``lung_crop_input`` (the classifier's
input), so training sees exactly what the node will feed the model.  Augmented views are made before
the crop (rotation, gamma, noise, resolution, crop margin), on the display image and its lung mask
together.

The backbone is frozen, so each view's pooled ``top_activation`` features are computed once and
the head is fitted on them (``training.xray_head``); they are cached under ``runs/cache/``.
The input size and the augmentation come from the model's configuration (``training.config``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dicom_node.domain import XRAY_CLASSES
from dicom_node.pipelines.xray.lung_fields import LungFields, LungSegmenter
from dicom_node.pipelines.xray.preprocessing import (
    LUNG_CROP_MARGIN,
    LUNG_FADE_END,
    LUNG_FADE_START,
    lung_crop_input,
    lung_weights,
    read_image,
)
from training.config import ViewAugment
from training.data import Record

__all__ = [
    "BACKBONE_LAYER",
    "BATCH",
    "CACHE_DIR",
    "FEATURE_LAYER",
    "STAT_NAMES",
    "Dataset",
    "Prepared",
    "cache_key",
    "feature_extractor",
    "image_statistics",
    "lung_feature_model",
    "pooled_features",
    "prepare",
]

BACKBONE_LAYER = "top_activation"
FEATURE_LAYER = "lung_features"  # the backbone's features weighted by the lung mask
CACHE_DIR = Path("runs/cache")
BATCH = 32


@dataclass
class Prepared:
    """One entry per record: the lung fields and the classifier inputs (view 0 unaugmented)."""

    records: list[Record]
    fields: list[LungFields]
    inputs: np.ndarray  # (n, views, size, size, 1) uint8 image channel, zeros if not analysable
    masks: np.ndarray  # (n, views, size, size) bool: the lung mask channel of each view

    def model_inputs(self, index: Sequence[tuple[int, int]]) -> np.ndarray:
        """The float two-channel inputs (image, lung weights) of (record, view) pairs."""
        return np.stack(
            [
                np.stack(
                    [self.inputs[i, v, ..., 0] / np.float32(255.0), lung_weights(self.masks[i, v])],
                    axis=-1,
                )
                for i, v in index
            ]
        ).astype(np.float32)

    stats: np.ndarray  # (n, k) image size/intensity statistics, for the shortcut probe

    @property
    def size(self) -> int:
        """The side of the square model input."""
        return int(self.inputs.shape[2])


@dataclass
class Dataset:
    """All X-ray records with their prepared inputs and features (view 0 = unaugmented)."""

    records: list[Record]
    prepared: Prepared
    features: np.ndarray  # (n, views, d)

    def rows(self, split: str | None = None, classes: Sequence[str] = XRAY_CLASSES) -> np.ndarray:
        ok = np.array([f.problem is None for f in self.prepared.fields])
        labels = np.array([r.label in classes for r in self.records])
        splits = np.array([split is None or r.split == split for r in self.records])
        out: np.ndarray = ok & labels & splits
        return out

    @property
    def y(self) -> np.ndarray:
        return np.array(
            [XRAY_CLASSES.index(r.label) if r.label in XRAY_CLASSES else -1 for r in self.records]
        )

    @property
    def families(self) -> list[str]:
        return [r.family for r in self.records]


def image_statistics(display: np.ndarray) -> np.ndarray:
    """Size and intensity statistics of the whole display image (what a shortcut could use)."""
    rows, cols = display.shape
    q = np.percentile(display, [1, 5, 25, 50, 75, 95, 99])
    return np.array(
        [
            rows,
            cols,
            cols / rows,
            float(display.mean()),
            float(display.std()),
            *q,
            float((display < 0.02).mean()),
            float((display > 0.98).mean()),
        ],
        np.float32,
    )


STAT_NAMES = (
    "rows",
    "columns",
    "aspect",
    "mean",
    "std",
    "p1",
    "p5",
    "p25",
    "p50",
    "p75",
    "p95",
    "p99",
    "black_fraction",
    "white_fraction",
)


def _augment(
    display: np.ndarray, mask: np.ndarray, rng: np.random.Generator, aug: ViewAugment
) -> tuple[np.ndarray, np.ndarray, float]:
    angle = float(rng.uniform(-aug.rotation_deg, aug.rotation_deg))
    img = Image.fromarray(display, mode="F").rotate(angle, Image.Resampling.BILINEAR)
    msk = Image.fromarray(mask.astype(np.uint8) * 255).rotate(angle, Image.Resampling.NEAREST)
    out = np.asarray(img, np.float32)
    if rng.random() < aug.lowres_prob:
        scale = float(rng.uniform(aug.lowres_min, 1.0))
        rows, cols = out.shape
        small = Image.fromarray(out, mode="F").resize(
            (max(8, int(cols * scale)), max(8, int(rows * scale))), Image.Resampling.BILINEAR
        )
        out = np.asarray(small.resize((cols, rows), Image.Resampling.BILINEAR), np.float32)
    gamma = float(np.exp(rng.uniform(-np.log(aug.gamma), np.log(aug.gamma))))
    out = np.clip(out, 0.0, 1.0) ** gamma
    out = out + rng.normal(0.0, rng.uniform(0.0, aug.noise), out.shape).astype(np.float32)
    margin = float(rng.uniform(*aug.margin))
    return np.clip(out, 0.0, 1.0).astype(np.float32), np.asarray(msk) > 127, margin


def _views(
    display: np.ndarray,
    fields: LungFields,
    views: int,
    seed: int,
    aug: ViewAugment | None,
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(views, size, size, 1) uint8 image channels and (views, size, size) lung masks."""
    out = np.zeros((views, size, size, 1), np.uint8)
    masks = np.zeros((views, size, size), bool)
    if fields.problem is not None:
        return out, masks
    rng = np.random.default_rng(seed)
    fade = (LUNG_FADE_START, LUNG_FADE_END)
    for v in range(views):
        if v == 0:
            image, mask, margin = display, fields.mask, LUNG_CROP_MARGIN
        else:
            if aug is None:
                raise ValueError("augmented views need a ViewAugment")
            image, mask, margin = _augment(display, fields.mask, rng, aug)
            if not mask.any():
                image, mask = display, fields.mask
        crop = lung_crop_input(image, mask, size, margin=margin, fade=fade)
        out[v, ..., 0] = np.rint(crop.model_input[..., 0] * 255.0).astype(np.uint8)
        masks[v] = crop.model_input[..., 1] > 0
    return out, masks


def prepare(
    records: Sequence[Record],
    data_dir: Path,
    segmenter: LungSegmenter,
    views_for: Sequence[int],
    *,
    size: int,
    seed: int = 0,
    aug: ViewAugment | None = None,
) -> Prepared:
    """Decode, segment and crop every record to ``size`` px (``views_for[i]`` views for record
    i; views after the first are augmented by ``aug``, seeded by ``seed`` + the record's index)."""
    n, max_views = len(records), max(views_for, default=1)
    if max_views > 1 and aug is None:
        raise ValueError("augmented views need a ViewAugment (aug)")
    inputs = np.zeros((n, max_views, size, size, 1), np.uint8)
    masks = np.zeros((n, max_views, size, size), bool)
    stats = np.zeros((n, len(STAT_NAMES)), np.float32)
    all_fields: list[LungFields] = []
    chunk = 64
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, n, chunk):
            part = records[start : start + chunk]
            displays = list(pool.map(lambda r: read_image(data_dir / r.path).display, part))
            fields = segmenter.segment(displays)
            all_fields.extend(fields)
            for j, (display, f) in enumerate(zip(displays, fields, strict=True)):
                i = start + j
                stats[i] = image_statistics(display)
                views, view_masks = _views(display, f, views_for[i], seed + i, aug, size)
                inputs[i, : views_for[i]] = views
                masks[i, : views_for[i]] = view_masks
    return Prepared(list(records), all_fields, inputs, masks, stats)


def lung_feature_model(backbone: Any) -> Any:
    """Two-channel lung crop -> features pooled over the lungs only (``pool``).

    Channel 0 (the image) feeds the backbone; channel 1 (the lung weights, mean 1) is averaged
    onto the backbone's 7 x 7 feature cells and multiplies the features (``lung_features``, the
    Grad-CAM layer), so the average pool is a lung-weighted mean: evidence can only come from
    the lungs, and Grad-CAM heat outside them is zero up to the cell size.  Fixed 1 x 1
    convolutions pick the channels, so the saved model needs no custom layers.
    """
    import keras

    size = int(backbone.inputs[0].shape[1])
    crop = keras.Input((size, size, 2), name="lung_crop")
    pick_image = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, name="image_channel")
    pick_lungs = keras.layers.Conv2D(
        1, 1, use_bias=False, trainable=False, name="lung_weight_channel"
    )
    image, weights = pick_image(crop), pick_lungs(crop)
    pick_image.set_weights([np.array([1.0, 0.0], np.float32).reshape(1, 1, 2, 1)])
    pick_lungs.set_weights([np.array([0.0, 1.0], np.float32).reshape(1, 1, 2, 1)])
    trunk = keras.Model(backbone.inputs, backbone.get_layer(BACKBONE_LAYER).output, name="trunk")
    features = trunk(image)
    cell = size // int(features.shape[1])
    cell_weights = keras.layers.AveragePooling2D(cell, name="lung_cell_weights")(weights)
    lung_features = keras.layers.Multiply(name=FEATURE_LAYER)([features, cell_weights])
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(lung_features)
    return keras.Model(crop, pooled, name="efficientnet_lite0_lung_features")


def feature_extractor(model: Any) -> Any:
    """A compiled function: two-channel inputs (b, size, size, 2) -> pooled features (b, d)."""
    import tensorflow as tf

    def run(images: Any) -> Any:
        return model(images, training=False)

    signature = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)
    return tf.function(run, input_signature=[signature])


def pooled_features(extract: Any, prepared: Prepared, views_for: Sequence[int]) -> np.ndarray:
    """Features (n, views, d) of the first ``views_for[i]`` views of each record (zeros after)."""
    pairs = [(i, v) for i, n in enumerate(views_for) for v in range(n)]
    parts = [
        extract(prepared.model_inputs(pairs[start : start + BATCH])).numpy()
        for start in range(0, len(pairs), BATCH)
    ]
    flat = np.concatenate(parts)
    out = np.zeros((*prepared.inputs.shape[:2], flat.shape[-1]), np.float32)
    for (i, v), row in zip(pairs, flat, strict=True):
        out[i, v] = row
    return out


def cache_key(**parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

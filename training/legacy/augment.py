"""Augmentation of the legacy compact CNN's trainer, on batches of model inputs in [0, 1].

Besides the usual small rotations, shifts, zoom and brightness/contrast, it targets the data
set's shortcuts (see the data README): independent x/y zoom (aspect ratio differs by source),
random down-and-up sampling and noise (resolution and JPEG quality differ by source), and
random rectangles of black, white or grey (frames, crops, "R"/"L" markers and text labels differ
by source and class).  All randomness comes from a seeded ``tf.random.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import tensorflow as tf

__all__ = ["AugmentConfig", "augment_batch", "seed_preset_config"]


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 10.0
    shift: float = 0.08  # fraction of the side
    zoom: float = 0.12  # scale in [1 - zoom, 1 + zoom]
    aspect: float = 0.10  # extra x/y scale difference
    flip: bool = False  # left-right flip: off for radiographs (the heart is on the left)
    gamma: float = 1.5  # gamma in [1/gamma, gamma], log-uniform
    contrast: float = 0.25
    brightness: float = 0.08
    lowres_prob: float = 0.4  # probability of down-and-up sampling an image
    lowres_min: float = 0.6  # smallest relative size when it happens
    noise: float = 0.03  # max std of additive Gaussian noise
    rectangles: int = 2  # random rectangles per image ...
    rectangle_prob: float = 0.4  # ... each drawn with this probability
    rectangle_max: float = 0.15  # max side as a fraction of the image side

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_preset_config() -> AugmentConfig:
    """The original demo's augmentation: rotation 15 degrees only."""
    return AugmentConfig(
        rotation_deg=15.0,
        shift=0.0,
        zoom=0.0,
        aspect=0.0,
        gamma=1.0,
        contrast=0.0,
        brightness=0.0,
        lowres_prob=0.0,
        noise=0.0,
        rectangles=0,
    )


def _uniform(gen: tf.random.Generator, n: tf.Tensor, lo: float, hi: float) -> tf.Tensor:
    return gen.uniform([n], lo, hi)


def _affine(images: tf.Tensor, gen: tf.random.Generator, cfg: AugmentConfig) -> tf.Tensor:
    n = tf.shape(images)[0]
    size = tf.cast(tf.shape(images)[1], tf.float32)
    centre = (size - 1.0) / 2.0
    theta = _uniform(gen, n, -1.0, 1.0) * (cfg.rotation_deg * math.pi / 180.0)
    scale = 1.0 + _uniform(gen, n, -cfg.zoom, cfg.zoom)
    aspect = _uniform(gen, n, -cfg.aspect, cfg.aspect)
    sx, sy = scale * (1.0 + aspect), scale * (1.0 - aspect)
    tx = _uniform(gen, n, -cfg.shift, cfg.shift) * size
    ty = _uniform(gen, n, -cfg.shift, cfg.shift) * size
    cos, sin = tf.cos(theta), tf.sin(theta)
    # Output pixel -> input pixel: input = A (output - centre - t) + centre.
    a0, a1 = cos / sx, sin / sx
    b0, b1 = -sin / sy, cos / sy
    a2 = centre - a0 * (centre + tx) - a1 * (centre + ty)
    b2 = centre - b0 * (centre + tx) - b1 * (centre + ty)
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def _low_resolution(images: tf.Tensor, gen: tf.random.Generator, cfg: AugmentConfig) -> tf.Tensor:
    size = tf.shape(images)[1:3]
    rel = gen.uniform([], cfg.lowres_min, 1.0)
    small = tf.maximum(tf.cast(tf.cast(size, tf.float32) * rel, tf.int32), 8)
    down = tf.image.resize(images, small, method="area")
    up = tf.image.resize(down, size, method="bilinear")
    # Chosen per image, not per batch: a whole blurred batch would swing the batch-norm
    # statistics between batches and destabilise training.
    chosen = gen.uniform([tf.shape(images)[0]]) < cfg.lowres_prob
    return tf.where(chosen[:, None, None, None], up, images)


def _intensity(images: tf.Tensor, gen: tf.random.Generator, cfg: AugmentConfig) -> tf.Tensor:
    n = tf.shape(images)[0]
    log_g = math.log(cfg.gamma) if cfg.gamma > 1.0 else 0.0
    gamma = tf.exp(_uniform(gen, n, -log_g, log_g))[:, None, None, None]
    images = tf.pow(tf.clip_by_value(images, 1e-6, 1.0), gamma)
    contrast = (1.0 + _uniform(gen, n, -cfg.contrast, cfg.contrast))[:, None, None, None]
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * contrast + mean
    return images + _uniform(gen, n, -cfg.brightness, cfg.brightness)[:, None, None, None]


def _rectangles(images: tf.Tensor, gen: tf.random.Generator, cfg: AugmentConfig) -> tf.Tensor:
    n = tf.shape(images)[0]
    size = tf.shape(images)[1]
    grid = tf.cast(tf.range(size), tf.float32) / tf.cast(size, tf.float32)
    rows, cols = grid[None, :, None], grid[None, None, :]
    for _ in range(cfg.rectangles):
        height = _uniform(gen, n, 0.03, cfg.rectangle_max)[:, None, None]
        width = _uniform(gen, n, 0.03, cfg.rectangle_max)[:, None, None]
        top = _uniform(gen, n, 0.0, 1.0)[:, None, None] * (1.0 - height)
        left = _uniform(gen, n, 0.0, 1.0)[:, None, None] * (1.0 - width)
        inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
        drawn = (_uniform(gen, n, 0.0, 1.0) < cfg.rectangle_prob)[:, None, None]
        # Fill with black, white or a random grey, one third each.
        kind = _uniform(gen, n, 0.0, 3.0)
        grey = _uniform(gen, n, 0.0, 1.0)
        fill = tf.where(kind < 1.0, 0.0, tf.where(kind < 2.0, 1.0, grey))[:, None, None, None]
        mask = tf.cast(inside & drawn, tf.float32)[..., None]
        images = images * (1.0 - mask) + fill * mask
    return images


def augment_batch(images: tf.Tensor, gen: tf.random.Generator, cfg: AugmentConfig) -> tf.Tensor:
    """Augment a batch ``(n, size, size, 1)`` in [0, 1]; returns the same shape in [0, 1]."""
    if cfg.rotation_deg or cfg.shift or cfg.zoom or cfg.aspect:
        images = _affine(images, gen, cfg)
    if cfg.flip:
        flip = gen.uniform([tf.shape(images)[0]]) < 0.5
        images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    if cfg.lowres_prob > 0:
        images = _low_resolution(images, gen, cfg)
    if cfg.gamma > 1.0 or cfg.contrast or cfg.brightness:
        images = _intensity(images, gen, cfg)
    if cfg.rectangles:
        images = _rectangles(images, gen, cfg)
    if cfg.noise > 0:
        std = _uniform(gen, tf.shape(images)[0], 0.0, cfg.noise)[:, None, None, None]
        images = images + gen.normal(tf.shape(images)) * std
    return tf.clip_by_value(images, 0.0, 1.0)

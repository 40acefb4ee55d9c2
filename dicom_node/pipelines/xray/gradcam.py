"""Grad-CAM (Selvaraju et al., 2017) for the classifiers, compiled once with ``tf.function``.

One call runs the forward pass and the gradient of the winning class's logit with respect to a
convolutional feature map, so probabilities, heatmaps and the map's pooled features (for the
out-of-distribution check) come from the same pass.  The feature map must be larger than 1x1:
"the last 4-D layer" of e.g. MobileNetV3 is a 1x1 logits conv, whose Grad-CAM is a constant
(see ``docs/notes.md``).

The CAM covers the model input; :func:`resample` puts it back into the part of the source
image the input was cut from (the lung crop box, or the whole image) and :func:`hot_region`
outlines its hottest area there, optionally restricted to a mask (the lung fields).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from dicom_node.errors import GradCamError

__all__ = [
    "Box",
    "CamResult",
    "GradCam",
    "hot_region",
    "mass_inside",
    "resample",
    "resample_into",
    "select_gradcam_layer",
]


def _spatial_shape(layer: Any) -> tuple[int, int] | None:
    """(height, width) of a layer's 4-D (NHWC) output, else None."""
    try:
        shape = tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return None
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        return None
    return (int(shape[1]), int(shape[2]))


def select_gradcam_layer(model: Any) -> str:
    """Name of the last layer whose output is a feature map larger than 1x1.

    Input layers and layers computing from the input only (scaling, channel repeat) are skipped:
    they come first, so searching from the end finds the deepest convolutional features.
    """
    for layer in reversed(model.layers):
        if layer.__class__.__name__ == "InputLayer":
            continue
        spatial = _spatial_shape(layer)
        if spatial is not None and spatial[0] > 1 and spatial[1] > 1:
            return str(layer.name)
    raise GradCamError(f"model {model.name!r} has no feature map larger than 1x1")


def _check_layer(model: Any, name: str) -> None:
    spatial = _spatial_shape(model.get_layer(name))
    if spatial is None or spatial[0] <= 1 or spatial[1] <= 1:
        raise GradCamError(f"layer {name!r} has no spatial feature map larger than 1x1")


Box = tuple[int, int, int, int]  # (row0, row1, col0, col1), half-open, source pixels


@dataclass(frozen=True)
class CamResult:
    probabilities: np.ndarray  # (n, n_classes), temperature applied
    cams: np.ndarray  # (n, h, w) in [0, 1], feature-map resolution
    features: np.ndarray  # (n, channels): the Grad-CAM layer averaged over height and width

    @classmethod
    def empty(cls, n_classes: int) -> CamResult:
        """The result for no images (every image of a batch was refused before the model)."""
        return cls(
            probabilities=np.zeros((0, n_classes), np.float32),
            cams=np.zeros((0, 1, 1), np.float32),
            features=np.zeros((0, 0), np.float32),
        )

    @classmethod
    def concatenate(cls, parts: list[CamResult]) -> CamResult:
        return cls(
            probabilities=np.concatenate([p.probabilities for p in parts]),
            cams=np.concatenate([p.cams for p in parts]),
            features=np.concatenate([p.features for p in parts]),
        )


class GradCam:
    """Probabilities, Grad-CAM maps and pooled features for a batch, from one ``tf.function``.

    ``logits_layer`` names the pre-softmax layer (the temperature divides it); when the model has
    none, the log of its output probabilities is used as the score.
    """

    def __init__(
        self,
        model: Any,
        layer_name: str | None = None,
        logits_layer: str | None = "logits",
        temperature: float = 1.0,
    ) -> None:
        import keras
        import tensorflow as tf

        self.layer_name = layer_name or select_gradcam_layer(model)
        _check_layer(model, self.layer_name)
        names = {layer.name for layer in model.layers}
        if logits_layer in names:
            score_output = model.get_layer(logits_layer).output
            from_logits = True
        else:
            score_output = model.outputs[0]
            from_logits = False
        self._model = keras.Model(
            model.inputs, [model.get_layer(self.layer_name).output, score_output]
        )
        self.temperature = float(temperature)
        input_shape = tuple(model.inputs[0].shape[1:])
        temperature_t = tf.constant(self.temperature, tf.float32)

        @tf.function(
            input_signature=[tf.TensorSpec((None, *input_shape), tf.float32)],
            reduce_retracing=True,
        )  # type: ignore[untyped-decorator,unused-ignore]
        def run(images: Any) -> tuple[Any, Any, Any]:
            with tf.GradientTape() as tape:
                features, scores = self._model(images, training=False)
                if not from_logits:
                    scores = tf.math.log(tf.clip_by_value(scores, 1e-7, 1.0))
                tape.watch(features)
                winner = tf.argmax(scores, axis=1)
                # Rows are independent (no batch statistics at inference), so the gradient of
                # the sum is each row's own gradient.
                chosen = tf.reduce_sum(tf.gather(scores, winner, axis=1, batch_dims=1))
            grads = tape.gradient(chosen, features)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            cams = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))
            peak = tf.reduce_max(cams, axis=(1, 2), keepdims=True)
            cams = tf.math.divide_no_nan(cams, peak)
            probs = tf.nn.softmax(scores / temperature_t, axis=1)
            pooled = tf.reduce_mean(features, axis=(1, 2))
            return probs, cams, pooled

        self._run = run
        self.input_shape = input_shape

    def __call__(self, images: np.ndarray) -> CamResult:
        probs, cams, pooled = self._run(np.asarray(images, dtype=np.float32))
        return CamResult(probabilities=probs.numpy(), cams=cams.numpy(), features=pooled.numpy())

    @property
    def feature_channels(self) -> int:
        """Length of ``CamResult.features``: the Grad-CAM layer's channel count."""
        return int(self._model.outputs[0].shape[-1])


def resample(cam: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A CAM resized (bilinear) to ``rows x cols``, clipped to [0, 1]."""
    image = Image.fromarray(cam.astype(np.float32), mode="F").resize(
        (cols, rows), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


def resample_into(cam: np.ndarray, shape: tuple[int, int], box: Box | None = None) -> np.ndarray:
    """The CAM as a heatmap of the source image (``shape``): stretched over ``box``, the part of
    the image the model input was squashed from (None: the whole image), zero elsewhere."""
    rows, cols = shape
    r0, r1, c0, c1 = box or (0, rows, 0, cols)
    heat = np.zeros(shape, np.float32)
    heat[r0:r1, c0:c1] = resample(cam, r1 - r0, c1 - c0)
    return heat


def mass_inside(heat: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's total that falls on ``mask``, in [0, 1] (0 for an empty map)."""
    total = float(heat.sum(dtype=np.float64))
    if total <= 0:
        return 0.0
    return min(1.0, float(heat[mask].sum(dtype=np.float64)) / total)


def _mask_coverage(mask: np.ndarray, box: Box, rows: int, cols: int) -> np.ndarray:
    """Fraction of each cell of a ``rows x cols`` grid over ``box`` that ``mask`` covers."""
    r0, r1, c0, c1 = box
    crop = Image.fromarray(mask[r0:r1, c0:c1].astype(np.uint8) * 255)
    # BOX averages every source pixel of a cell: thin lung tips are not lost on a coarse grid.
    small = crop.resize((cols, rows), Image.Resampling.BOX)
    return np.asarray(small, np.float32) / np.float32(255.0)


def hot_region(
    cam: np.ndarray,
    rows: int,
    cols: int,
    level: float = 0.5,
    box: Box | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Closed polygon around the hottest area, in source (column, row) pixel coordinates.

    ``box`` is where the CAM lies in the ``rows x cols`` source (None: the whole image);
    ``mask`` (bool, source shape) restricts the heat to it, so the region lies on the mask
    (the lung fields).  The contour at ``level`` x peak of the connected region containing the
    peak is traced on the CAM upsampled 8x (smooth enough, cheap), then scaled to the source;
    the first point is repeated last, as an SR closed POLYLINE needs.
    """
    from scipy import ndimage
    from skimage.measure import approximate_polygon, find_contours

    r0, r1, c0, c1 = box or (0, rows, 0, cols)
    up = 8
    fine = resample(cam, cam.shape[0] * up, cam.shape[1] * up)
    if mask is not None:
        fine = fine * _mask_coverage(mask, (r0, r1, c0, c1), *fine.shape)
    peak = np.unravel_index(int(np.argmax(fine)), fine.shape)
    if fine[peak] <= 0:
        # No evidence anywhere: outline the whole box rather than invent a region.
        corners = np.array([[c0, r0], [c1 - 1, r0], [c1 - 1, r1 - 1], [c0, r1 - 1], [c0, r0]])
        return corners.astype(np.float32)
    labels, _ = ndimage.label(fine >= level * fine[peak])
    region = np.pad(labels == labels[peak], 1).astype(np.float32)
    contours = find_contours(region, 0.5)  # type: ignore[no-untyped-call,unused-ignore]
    contour = max(contours, key=len) - 1.0  # undo the padding
    contour = approximate_polygon(contour, tolerance=0.5)  # type: ignore[no-untyped-call,unused-ignore]
    scale = np.array([(r1 - r0) / fine.shape[0], (c1 - c0) / fine.shape[1]])
    rc = (contour + 0.5) * scale - 0.5 + np.array([r0, c0])
    rc = np.clip(rc, 0, [rows - 1, cols - 1])
    points = np.asarray(rc[:, ::-1], dtype=np.float32)  # (row, col) -> (column, row)
    if not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    return points

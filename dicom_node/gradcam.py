"""Grad-CAM (Selvaraju et al., 2017) for the classifiers, compiled once with ``tf.function``.

One call runs the forward pass and the gradient of the winning class's logit with respect to a
convolutional feature map, so probabilities and heatmaps come from the same pass.  The feature
map must be larger than 1x1: "the last 4-D layer" of e.g. MobileNetV3 is a 1x1 logits conv,
whose Grad-CAM is a constant (see ``docs/notes.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from dicom_node.errors import GradCamError


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


@dataclass(frozen=True)
class CamResult:
    probabilities: np.ndarray  # (n, n_classes), temperature applied
    cams: np.ndarray  # (n, h, w) in [0, 1], feature-map resolution


class GradCam:
    """Probabilities and Grad-CAM maps for a batch, from one compiled ``tf.function``.

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
        def run(images: Any) -> tuple[Any, Any]:
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
            return probs, cams

        self._run = run
        self.input_shape = input_shape

    def __call__(self, images: np.ndarray) -> CamResult:
        probs, cams = self._run(np.asarray(images, dtype=np.float32))
        return CamResult(probabilities=probs.numpy(), cams=cams.numpy())


def resample(cam: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A CAM resized (bilinear) to ``rows x cols``: the model input is the whole image squashed
    to a square, so the map stretches back over the whole source image."""
    image = Image.fromarray(cam.astype(np.float32), mode="F").resize(
        (cols, rows), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


def hot_region(cam: np.ndarray, rows: int, cols: int, level: float = 0.5) -> np.ndarray:
    """Closed polygon around the hottest area, in source (column, row) pixel coordinates.

    The contour at ``level`` x peak of the connected region containing the peak is traced on the
    CAM upsampled 8x (smooth enough, cheap), then scaled to the source; the first point is
    repeated last, as an SR closed POLYLINE needs.
    """
    from scipy import ndimage
    from skimage.measure import approximate_polygon, find_contours

    up = 8
    fine = resample(cam, cam.shape[0] * up, cam.shape[1] * up)
    peak = np.unravel_index(int(np.argmax(fine)), fine.shape)
    if fine[peak] <= 0:
        # No evidence anywhere: outline the whole image rather than invent a region.
        box = np.array([[0, 0], [cols - 1, 0], [cols - 1, rows - 1], [0, rows - 1], [0, 0]])
        return box.astype(np.float32)
    labels, _ = ndimage.label(fine >= level * fine[peak])
    region = np.pad(labels == labels[peak], 1).astype(np.float32)
    contours = find_contours(region, 0.5)  # type: ignore[no-untyped-call,unused-ignore]
    contour = max(contours, key=len) - 1.0  # undo the padding
    contour = approximate_polygon(contour, tolerance=0.5)  # type: ignore[no-untyped-call,unused-ignore]
    scale = np.array([rows / fine.shape[0], cols / fine.shape[1]])
    rc = np.clip((contour + 0.5) * scale - 0.5, 0, [rows - 1, cols - 1])
    points = np.asarray(rc[:, ::-1], dtype=np.float32)  # (row, col) -> (column, row)
    if not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    return points

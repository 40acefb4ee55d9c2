"""The severity head's inputs: the shipped X-ray classifier's pooled lung-field features, the
lung intensity statistics of ``dicom_node.pipelines.xray.severity`` and p(class), per view."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dicom_node.domain import XRAY_CLASSES
from dicom_node.pipelines.model_store import ModelArtefact, load_keras_model
from dicom_node.pipelines.xray.severity import lung_intensity_statistics
from training.data import Record
from training.evaluate import softmax
from training.xray_prep import BATCH, CACHE_DIR, Prepared, cache_key

__all__ = ["Features", "extract"]


@dataclass
class Features:
    """Per record: classifier features + lung statistics per view, p(class) of view 0."""

    records: list[Record]
    x: np.ndarray  # (n, views, d + 12)
    probabilities: np.ndarray  # (n, classes) of the unaugmented view
    analysable: np.ndarray  # (n,) bool: plausible lung fields
    image_stats: np.ndarray  # (n, 14) whole-image statistics (shortcut baseline)
    classifier: str
    classifier_version: str
    layer: str


def _extractor(model: Any, layer: str, logits_layer: str) -> Any:
    """Classifier inputs -> (features pooled as the node pools them, logits)."""
    import keras
    import tensorflow as tf

    pooled = keras.ops.mean(model.get_layer(layer).output, axis=(1, 2))
    both = keras.Model(model.inputs, [pooled, model.get_layer(logits_layer).output])

    def run(images: Any) -> Any:
        return both(images, training=False)

    signature = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)
    return tf.function(run, input_signature=[signature])


def extract(prepared: Prepared, views_for: Sequence[int], artefact: ModelArtefact) -> Features:
    """The features of the first ``views_for[i]`` views of every record (cached under
    ``runs/cache/``) and p(class) of view 0, from the classifier ``artefact``."""
    card = artefact.card
    layer = card.gradcam_layer or "lung_features"
    digest = hashlib.sha256(prepared.inputs.tobytes())
    digest.update(prepared.masks.tobytes())
    key = cache_key(
        inputs=digest.hexdigest(), model=artefact.version, layer=layer, what="xray_severity"
    )
    cache = CACHE_DIR / f"severity_features_{key}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            x, logits = data["x"], data["logits"]
    else:
        run = _extractor(load_keras_model(artefact), layer, card.logits_layer)
        pairs = [(i, v) for i, n in enumerate(views_for) for v in range(n)]
        rows, logit_rows = [], []
        for start in range(0, len(pairs), BATCH):
            inputs = prepared.model_inputs(pairs[start : start + BATCH])
            pooled, part_logits = run(inputs)
            stats = np.stack([lung_intensity_statistics(m) for m in inputs])
            rows.append(np.concatenate([pooled.numpy(), stats], axis=1))
            logit_rows.append(part_logits.numpy())
        flat, flat_logits = np.concatenate(rows), np.concatenate(logit_rows)
        x = np.zeros((len(views_for), max(views_for), flat.shape[1]), np.float32)
        logits = np.zeros((len(views_for), len(XRAY_CLASSES)), np.float32)
        for (i, v), row, lg in zip(pairs, flat, flat_logits, strict=True):
            x[i, v] = row
            if v == 0:
                logits[i] = lg
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=x, logits=logits)
    for i, n in enumerate(views_for):  # fewer views than the widest: repeat view 0
        x[i, n:] = x[i, 0]
    return Features(
        records=prepared.records,
        x=x,
        probabilities=softmax(logits, card.temperature),
        analysable=np.array([f.problem is None for f in prepared.fields]),
        image_stats=prepared.stats,
        classifier=artefact.name,
        classifier_version=artefact.version,
        layer=layer,
    )

"""CT slice classifier: P(COVID-19) for 2-D axial CT slices (used by the CT pipeline).

Slices in Hounsfield units are rendered like the training images before the shared
preprocessing: cropped to the body (the UCSD training slices are tight crops), then the lung
window -1350..150 HU (centre -600, width 1500; the window the data set uses for its DICOM
slices), then :func:`dicom_node.preprocessing.to_model_input`.  Inference is batched through a
compiled ``tf.function`` returning temperature-scaled probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.domain import ModelInfo
from dicom_node.errors import PreprocessingError
from dicom_node.model_store import ModelArtefact, find_artefact, load_keras_model
from dicom_node.preprocessing import hu_slice_to_display, to_model_input

MODEL_NAME = "ct_slice_classifier"
BATCH = 32
POSITIVE_CLASS = "covid"


class CtSliceClassifier:
    def __init__(self, artefact: ModelArtefact, model: Any) -> None:
        import keras
        import tensorflow as tf

        card = artefact.card
        self.artefact = artefact
        self.classes = card.classes
        if POSITIVE_CLASS not in self.classes:
            raise PreprocessingError(f"model classes {self.classes} lack {POSITIVE_CLASS!r}")
        self.model_info = ModelInfo(
            name=artefact.name, version=artefact.version, classes=self.classes
        )
        self.input_size = card.input.size
        self.window: tuple[float, float] = card.ct_input.window_hu
        self.crop_body = card.ct_input.crop_body
        self.temperature = card.temperature
        self._percentiles = card.input.percentiles
        self._margin = card.input.central_margin
        self._positive = self.classes.index(POSITIVE_CLASS)
        # The card's label rule argmax(p_k * w_k) as a threshold on P(covid) (0.5 by default).
        weights = card.decision.weights
        w_pos = float(weights[self._positive])
        w_neg = max(float(w) for i, w in enumerate(weights) if i != self._positive)
        self.threshold = w_neg / (w_pos + w_neg)
        logits_model = keras.Model(model.inputs, model.get_layer("logits").output)
        temperature = tf.constant(self.temperature, tf.float32)

        @tf.function(
            input_signature=[tf.TensorSpec((None, self.input_size, self.input_size, 1), tf.float32)]
        )  # type: ignore[untyped-decorator,unused-ignore]
        def probabilities(images: Any) -> Any:
            return tf.nn.softmax(logits_model(images, training=False) / temperature, axis=1)

        self._probabilities = probabilities

    @classmethod
    def load(cls, models_dir: Path | None = None, version: str | None = None) -> CtSliceClassifier:
        """The shipped model (newest version unless given), checksum-verified.

        Each call loads the model again: keep the classifier (the CT pipeline does, and the
        registry keeps the pipeline).
        """
        artefact = find_artefact(MODEL_NAME, version=version, models_dir=models_dir)
        return cls(artefact, load_keras_model(artefact))

    def warm_up(self) -> None:
        self.predict_inputs(np.zeros((1, self.input_size, self.input_size, 1), np.float32))

    def _input(self, display: np.ndarray) -> np.ndarray:
        lo, hi = self._percentiles[0], self._percentiles[1]
        return to_model_input(display, self.input_size, (lo, hi), self._margin)

    def predict_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Model inputs ``(n, size, size, 1)`` -> P(covid) ``(n,)``, in batches."""
        inputs = np.asarray(inputs, dtype=np.float32)
        if len(inputs) == 0:
            return np.zeros(0, np.float32)
        parts = [
            self._probabilities(inputs[i : i + BATCH]).numpy()[:, self._positive]
            for i in range(0, len(inputs), BATCH)
        ]
        return np.concatenate(parts).astype(np.float32)

    def predict_hu_slices(self, hu: np.ndarray) -> np.ndarray:
        """Slices ``(n, rows, cols)`` in HU -> P(covid) ``(n,)``: body crop, lung window, model.

        Pass only slices that contain lung; the model was trained on axial chest slices.
        """
        hu = np.asarray(hu)
        if hu.ndim == 2:
            hu = hu[np.newaxis]
        if hu.ndim != 3:
            raise PreprocessingError(f"expected (n, rows, cols) HU slices, got shape {hu.shape}")
        displays = [hu_slice_to_display(s, self.window, self.crop_body) for s in hu]
        return self.predict_inputs(np.stack([self._input(d) for d in displays]))

    def predict_images(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Already rendered grey slices (uint8 0..255, or float in [0, 1]; any size) -> P(covid)."""
        inputs = []
        for image in images:
            array = np.asarray(image)
            if array.ndim != 2:
                raise PreprocessingError(f"expected 2-D grey images, got shape {array.shape}")
            display = array / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
            inputs.append(self._input(np.asarray(display, dtype=np.float32)))
        if not inputs:
            return np.zeros(0, np.float32)
        return self.predict_inputs(np.stack(inputs))

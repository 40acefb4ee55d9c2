"""Small real Keras model artefacts, saved the way the shipped ones are (card and checksums)."""

from __future__ import annotations

import json
from pathlib import Path

from dicom_node.model_store import write_checksums


def write_tiny_ct_classifier(root: Path, version: str = "0.0.1", seed: int = 0) -> Path:
    """An untrained (seeded) 64x64 CT slice classifier under ``root``; returns ``root``.

    Its probabilities are real model outputs, just meaningless.  Needs TensorFlow (Keras).
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64, 64, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(x))
    directory = root / "ct_slice_classifier" / version
    directory.mkdir(parents=True)
    model.save(directory / "model.keras")
    card = {"classes": ["covid", "noncovid"], "input": {"size": 64}}
    (directory / "model_card.json").write_text(json.dumps(card))
    write_checksums(directory)
    return root

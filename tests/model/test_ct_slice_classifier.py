"""The shipped CT slice classifier: loading, the HU path, batching, validation quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from dicom_node.errors import PreprocessingError
from dicom_node.model_store import find_artefact, load_keras_model
from dicom_node.pipelines.ct_slice_classifier import CtSliceClassifier
from dicom_node.preprocessing import LUNG_WINDOW_HU, hu_slice_to_display
from training.data import read_manifest


@pytest.fixture(scope="module")
def classifier() -> CtSliceClassifier:
    return CtSliceClassifier.load()


def _hu_slices(shared_data: Path) -> np.ndarray:
    slices = []
    for path in sorted((shared_data / "ct_dicom" / "covid").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        slices.append(pydicom.pixels.apply_modality_lut(ds.pixel_array, ds))
    return np.stack(slices)


def test_shipped_artefact(classifier: CtSliceClassifier) -> None:
    card = find_artefact("ct_slice_classifier").card
    assert "covid" in card.classes
    # Evaluated on the test split once; the card states whether the target was met.
    auc = card.metrics["test"]["macro_roc_auc"]
    lo, hi = card.metrics["test"]["macro_roc_auc_ci95"]
    assert lo <= auc <= hi
    (target,) = card.targets
    assert target.metric == "macro_roc_auc" and target.value == auc
    assert target.met == (auc >= target.minimum)
    below = [item for item in card.limitations if item.startswith("Below the issue's target")]
    assert bool(below) != target.met
    assert classifier.window == LUNG_WINDOW_HU == card.ct.window_hu


def test_warm_up_traces_once_for_every_batch_size() -> None:
    artefact = find_artefact("ct_slice_classifier")
    fresh = CtSliceClassifier(artefact, load_keras_model(artefact))
    tracing_count = fresh._probabilities.experimental_get_tracing_count
    fresh.warm_up()
    assert tracing_count() == 1
    fresh.predict_inputs(np.zeros((5, fresh.input_size, fresh.input_size, 1), np.float32))
    assert tracing_count() == 1


def test_hu_slices_in_batches(classifier: CtSliceClassifier, shared_data: Path) -> None:
    hu = _hu_slices(shared_data)  # 48 slices: more than one batch of 32
    p = classifier.predict_hu_slices(hu)
    assert p.shape == (len(hu),) and p.dtype == np.float32
    assert ((p >= 0) & (p <= 1)).all()
    assert np.unique(np.round(p, 3)).size > 1  # not a constant
    # Batch composition does not change a slice's score.
    np.testing.assert_allclose(classifier.predict_hu_slices(hu[5]), p[5:6], atol=1e-4)
    # The HU path is the PNG path applied to the rendered slice.
    rendered = hu_slice_to_display(hu[0])
    np.testing.assert_allclose(classifier.predict_images([rendered]), p[:1], atol=1e-4)
    with pytest.raises(PreprocessingError):
        classifier.predict_hu_slices(np.zeros((2, 3, 4, 5)))


def test_validation_slices_are_separated(classifier: CtSliceClassifier, shared_data: Path) -> None:
    """AUC on the validation split (never the test split), through ``predict_images``."""
    records = [r for r in read_manifest(shared_data) if r.modality == "ct" and r.split == "val"]
    images = [np.asarray(Image.open(shared_data / r.path).convert("L")) for r in records]
    p = classifier.predict_images(images)
    truth = [r.label == "covid" for r in records]
    auc = roc_auc_score(truth, p)
    assert auc > 0.7  # far better than chance
    # The node's path reproduces the validation AUC the card reports (training's evaluation).
    card = find_artefact("ct_slice_classifier").card
    assert abs(auc - card.metrics["val"]["macro_roc_auc"]) < 0.01

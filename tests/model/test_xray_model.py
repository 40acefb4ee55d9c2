"""The shipped X-ray model: checksum-verified loading, the pipeline end to end, batching."""

from __future__ import annotations

import copy
import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from sklearn.metrics import roc_auc_score

from dicom_node.domain import XRAY_CLASSES, XrayImageFinding
from dicom_node.errors import ModelStoreError
from dicom_node.pipelines.model_store import find_artefact, load_keras_model
from dicom_node.pipelines.xray.pipeline import XrayPipeline
from dicom_node.pipelines.xray.preprocessing import read_image
from dicom_node.routing import header_info, route
from training.data import read_manifest


@pytest.fixture(scope="module")
def pipeline() -> XrayPipeline:
    return XrayPipeline.load()


@pytest.fixture(scope="module")
def rg1() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))


def test_shipped_artefact_is_verified_and_described() -> None:
    artefact = find_artefact("xray_classifier")  # verifies SHA256SUMS
    card = artefact.card
    assert card.classes == XRAY_CLASSES
    assert (artefact.directory / "model_card.md").is_file()
    assert artefact.weights_path.stat().st_size < 30 * 2**20  # small enough to commit
    # The card reports the targets, met or not, from its own numbers.
    assert card.targets
    for target in card.targets:
        assert target.met == (target.value is not None and target.value >= target.minimum)
    assert card.lung_crop is not None and card.ood is not None


def test_card_metrics_agree_with_the_saved_predictions() -> None:
    """The card's test numbers are recomputed from predictions.csv and the card's label rule."""
    artefact = find_artefact("xray_classifier")
    card = artefact.card
    with (artefact.directory / "predictions.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "test"]
    rows = [r for r in rows if r["true"] in XRAY_CLASSES]
    probs = np.array([[float(r[f"p_{c}"]) for c in XRAY_CLASSES] for r in rows])
    truth = np.array([XRAY_CLASSES.index(r["true"]) for r in rows])
    predicted = (probs * np.asarray(card.decision.weights)).argmax(axis=1)
    test = card.metrics["test"]
    assert len(rows) == test["n"]
    np.testing.assert_array_equal(
        np.bincount(truth * 3 + predicted, minlength=9).reshape(3, 3), test["confusion_matrix"]
    )
    covid = truth == 0
    assert (predicted[covid] == 0).mean() == pytest.approx(
        test["per_class"]["covid"]["sensitivity"]
    )
    auc = np.mean([roc_auc_score(truth == k, probs[:, k]) for k in range(3)])
    assert auc == pytest.approx(test["macro_roc_auc"], abs=1e-3)


def test_tampered_weights_or_card_are_refused(tmp_path: Path) -> None:
    artefact = find_artefact("xray_classifier")
    for name in ("model.keras", "model_card.json"):
        target = tmp_path / name.replace(".", "_") / "xray_classifier" / artefact.version
        shutil.copytree(artefact.directory, target)
        with (target / name).open("r+b") as handle:
            handle.seek(100)
            byte = handle.read(1)
            handle.seek(100)
            handle.write(bytes([byte[0] ^ 0xFF]))
        with pytest.raises(ModelStoreError, match="checksum mismatch"):
            XrayPipeline.load(models_dir=target.parent.parent)


def test_real_cr_end_to_end(pipeline: XrayPipeline, rg1: pydicom.Dataset) -> None:
    finding = pipeline.run([rg1])
    assert len(finding.images) == 1
    image = finding.images[0]
    assert image.source_sop_instance_uid == rg1.SOPInstanceUID
    assert tuple(image.probabilities) == XRAY_CLASSES
    assert sum(image.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    weights = pipeline.artefact.card.decision.weights
    scores = [image.probabilities[c] * w for c, w in zip(XRAY_CLASSES, weights, strict=True)]
    assert image.label == XRAY_CLASSES[int(np.argmax(scores))]
    assert weights[0] >= 1.0 and weights[1:] == (1.0, 1.0)  # only COVID-19 is weighted
    assert image.heatmap.shape == (rg1.Rows, rg1.Columns)
    assert image.heatmap.min() >= 0.0 and image.heatmap.max() <= 1.0
    assert image.display_image.shape == (rg1.Rows, rg1.Columns)
    assert image.display_image.dtype == np.uint8
    # MONOCHROME1 shown as MONOCHROME2: the mediastinum is brighter than the lung fields.
    d = image.display_image.astype(float)
    rows, cols = d.shape
    assert (
        d[rows // 3 : rows // 2, cols // 2 - 50 : cols // 2 + 50].mean()
        > d[rows // 3 : rows // 2, cols // 5 : cols // 3].mean()
    )
    polygon = image.hot_region
    np.testing.assert_array_equal(polygon[0], polygon[-1])
    assert polygon[:, 0].max() <= rg1.Columns - 1 and polygon[:, 1].max() <= rg1.Rows - 1
    # The polygon surrounds the hottest pixel of the heatmap on the lungs (whole-image
    # models: of the heatmap).
    from matplotlib.path import Path as PolygonPath

    heat = image.heatmap if image.lung_mask is None else image.heatmap * image.lung_mask
    hot_row, hot_col = np.unravel_index(np.argmax(heat), heat.shape)
    assert PolygonPath(polygon).contains_point((hot_col, hot_row), radius=rg1.Columns / 50)


def test_gradcam_layer_is_the_cards_and_spatial(pipeline: XrayPipeline) -> None:
    assert pipeline.cam.layer_name == pipeline.artefact.card.gradcam_layer
    model_input = np.zeros((1, *pipeline.cam.input_shape), np.float32)
    result = pipeline.cam(model_input)
    assert result.cams.shape[1] > 1 and result.cams.shape[2] > 1
    assert result.features.shape == (1, pipeline.cam.feature_channels)


def test_warm_up_traces_once_for_every_batch_size(rg1: pydicom.Dataset) -> None:
    artefact = find_artefact("xray_classifier")
    fresh = XrayPipeline(artefact, load_keras_model(artefact))
    tracing_count = fresh.cam._run.experimental_get_tracing_count
    assert tracing_count() == 0
    fresh.warm_up()
    assert tracing_count() == 1
    fresh.run([rg1, rg1, rg1])  # a study's batch reuses the warm-up's trace
    assert tracing_count() == 1


def test_batches_give_the_same_result_as_single_images(
    pipeline: XrayPipeline, shared_data: Path
) -> None:
    records = [r for r in read_manifest(shared_data) if r.modality == "xray" and r.split == "val"]
    images = [read_image(shared_data / r.path) for r in records[:5]]
    prepared = pipeline.prepare_images(images)
    assert len(prepared.images) >= 4  # validation radiographs: (nearly) all analysable
    batch = pipeline.predict(prepared)
    for i, image in enumerate(prepared.images):
        single = pipeline.predict(pipeline.prepare_images([images[image.position]]))
        np.testing.assert_allclose(single.probabilities[0], batch.probabilities[i], atol=1e-4)
        np.testing.assert_allclose(single.cams[0], batch.cams[i], atol=1e-3)
        np.testing.assert_allclose(single.features[0], batch.features[i], rtol=1e-3, atol=1e-4)


def test_validation_images_are_mostly_right(pipeline: XrayPipeline, shared_data: Path) -> None:
    """Through the node's own path; the validation split, never the test split."""
    records = [
        r
        for r in read_manifest(shared_data)
        if r.modality == "xray" and r.split == "val" and r.label in XRAY_CLASSES
    ][::3]
    images = [read_image(shared_data / r.path) for r in records]
    outcomes = pipeline.analyse_images(images)
    analysed = [
        (o.label, r.label)
        for o, r in zip(outcomes, records, strict=True)
        if isinstance(o, XrayImageFinding)
    ]
    assert len(analysed) >= 0.9 * len(records)  # few radiographs are refused
    assert np.mean([predicted == truth for predicted, truth in analysed]) > 0.8


def test_lateral_views_are_routed_away(rg1: pydicom.Dataset) -> None:
    """The routing table, not the pipeline, keeps laterals out (the job is ignored, not failed)."""
    lateral = copy.deepcopy(rg1)
    lateral.ViewPosition = "LL"
    frontal = copy.deepcopy(rg1)
    frontal.ViewPosition = "PA"
    decision = route([header_info(lateral), header_info(frontal)])
    assert decision.pipeline == "xray" and decision.instance_indexes == (1,)
    assert "lateral" in route([header_info(lateral)]).reason


def test_png_input_goes_through_the_same_pipeline(
    pipeline: XrayPipeline, rg1: pydicom.Dataset, tmp_path: Path
) -> None:
    """The DICOM and its display image as PNG give the same probabilities."""
    from_dicom = pipeline.run([rg1]).images[0]
    png = tmp_path / "rg1.png"
    Image.fromarray(from_dicom.display_image).save(png)
    prepared = pipeline.prepare_images([read_image(png)])
    from_png = pipeline.postprocess(pipeline.predict(prepared), prepared).images[0]
    for name in XRAY_CLASSES:
        assert from_png.probabilities[name] == pytest.approx(
            from_dicom.probabilities[name], abs=0.02
        )

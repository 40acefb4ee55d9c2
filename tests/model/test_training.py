"""A tiny training run (one epoch on a few images) of each model, end to end into the node."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_node.pipelines.model_store import verify_checksums
from training.data import read_manifest, sample_weights
from training.evaluate import (
    expected_calibration_error,
    fit_temperature,
    macro_auc,
    softmax,
    wilson_ci,
)
from training.legacy.trainer import TrainConfig

TINY = [
    "--epochs",
    "1",
    "--limit-per-class",
    "4",
    "--input-size",
    "64",
    "--n-boot",
    "20",
    "--batch-size",
    "4",
]


def _check_run(directory: Path, classes: list[str]) -> dict:
    for name in (
        "model.keras",
        "model_card.json",
        "model_card.md",
        "SHA256SUMS",
        "history.csv",
        "predictions.csv",
        "training_curves.png",
        "confusion_val.png",
        "roc_test.png",
        "reliability_val.png",
    ):
        assert (directory / name).is_file(), name
    verify_checksums(directory)
    card = json.loads((directory / "model_card.json").read_text())
    assert card["classes"] == classes
    assert card["input"]["size"] == 64
    assert len(card["data"]["manifest_sha256"]) == 64
    assert card["training"]["epochs_run"] == 1
    assert "--limit-per-class" in card["training"]["command"]
    for split in ("val", "test"):
        metrics = card["metrics"][split]
        assert metrics["n"] == 4 * len(classes)
        assert set(metrics["per_class"]) == set(classes)
        assert 0.0 <= metrics["per_class"][classes[0]]["sensitivity"] <= 1.0
        assert np.asarray(metrics["confusion_matrix"]).sum() == metrics["n"]
    assert card["temperature"] > 0
    return card


def test_tiny_compact_xray_training_run_is_loaded_by_the_node(
    shared_data: Path, tmp_path: Path
) -> None:
    from dicom_node.pipelines.xray.pipeline import XrayPipeline
    from training.legacy.train_xray_compact import main

    out = tmp_path / "xray_classifier" / "0.0.1"
    assert main(["--data", str(shared_data), "--out", str(out), "--version", "0.0.1", *TINY]) == 0
    card = _check_run(out, ["covid", "normal", "pneumonia_bac"])
    assert card["extra_evaluations"]["Classes outside the model"]["results"]["val"]["all"]["n"] > 0

    pipeline = XrayPipeline.load(models_dir=tmp_path)
    assert pipeline.model_info.version == "0.0.1" and pipeline.input_size == 64
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    finding = pipeline.run([ds])
    image = finding.images[0]
    assert image.heatmap.shape == (ds.Rows, ds.Columns)
    assert sum(image.probabilities.values()) == pytest.approx(1.0, abs=1e-4)


def test_sample_weights_balance_classes_and_sources(shared_data: Path) -> None:
    train = [
        r
        for r in read_manifest(shared_data)
        if r.modality == "xray" and r.split == "train" and r.label != "pneumonia_vir"
    ]
    classes = ["covid", "normal", "pneumonia_bac"]
    labels, families = [r.label for r in train], [r.family for r in train]
    for balance in (0.0, 0.5):
        w = sample_weights(labels, families, classes, balance)
        totals = [w[np.asarray(labels) == c].sum() for c in classes]
        np.testing.assert_allclose(totals, len(train) / 3, rtol=1e-4)  # classes weigh the same
    w = sample_weights(labels, families, classes, 0.5)
    ieee_bac = [
        wi
        for wi, r in zip(w, train, strict=True)
        if r.label == "pneumonia_bac" and r.family == "ieee"
    ]
    kaggle_bac = [
        wi
        for wi, r in zip(w, train, strict=True)
        if r.label == "pneumonia_bac" and r.family == "kaggle"
    ]
    assert min(ieee_bac) > 2 * max(kaggle_bac)  # the few adult bacterial images count more


def test_metrics_helpers() -> None:
    lo, hi = wilson_ci(45, 50)
    assert lo < 0.9 < hi and hi < 1.0 and lo > 0.75
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    logits = np.eye(3)[y] * 4.0 + rng.normal(0, 2.0, (400, 3))
    t = fit_temperature(logits * 3.0, y)  # overconfident logits need T > 1
    assert t > 1.5
    ece_raw, _ = expected_calibration_error(softmax(logits * 3.0), y)
    ece_fit, bins = expected_calibration_error(softmax(logits * 3.0, t), y)
    assert ece_fit < ece_raw and sum(b["n"] for b in bins) == 400
    # Macro AUC: perfect scores give 1, inverted scores 0, a class without positives is skipped.
    assert macro_auc(y, np.eye(3)[y], 3) == 1.0
    assert macro_auc(y, 1.0 - np.eye(3)[y], 3) == 0.0
    two = y[y < 2]
    assert macro_auc(two, np.eye(3)[two], 3) == 1.0


def test_ensemble_of_a_keras_backbone_is_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compact CNN only"):
        TrainConfig(data_dir=tmp_path, out_dir=tmp_path / "run", backbone="resnet50", ensemble=2)
    with pytest.raises(ValueError, match="at least 1"):
        TrainConfig(data_dir=tmp_path, out_dir=tmp_path / "run", ensemble=0)
    assert not (tmp_path / "run").exists()

"""The lung-field X-ray classifier: training and the node feed the model the same input, and a
tiny training run produces an artefact the node loads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from dicom_node.pipelines.model_store import verify_checksums
from dicom_node.pipelines.xray.lung_fields import LungSegmenter
from dicom_node.pipelines.xray.pipeline import XrayPipeline
from tests.support.factories import grey_dataset
from training.data import Record, read_manifest
from training.xray_prep import prepare


def _record(shared_data: Path, source: str = "nih", split: str = "val") -> Record:
    for record in read_manifest(shared_data):
        if record.modality == "xray" and record.source == source and record.split == split:
            return record
    raise AssertionError(f"no {source} {split} x-ray in the manifest")


def test_training_and_the_node_give_the_model_the_same_lung_crop(shared_data: Path) -> None:
    """A data set PNG as training reads it, and the same picture as 12-bit MONOCHROME1 DICOM
    as the node receives it: the same two-channel input (image and lung weights)."""
    record = _record(shared_data)
    grey = np.asarray(Image.open(shared_data / record.path).convert("L"), dtype=np.int32)
    ds = grey_dataset((255 - grey) * 16 + 7, "MONOCHROME1", 12, window=(2047.0, 4096.0))

    pipeline = XrayPipeline.load()
    node = pipeline.preprocess([ds]).images[0].model_input
    trained = prepare([record], shared_data, LungSegmenter.load(), [1], size=pipeline.input_size)
    train = trained.model_inputs([(0, 0)])[0]

    assert node.shape == train.shape == (pipeline.input_size, pipeline.input_size, 2)
    image_diff = np.abs(node[..., 0] - train[..., 0])
    # Training stores the image channel as 8 bit; masks may differ at a few edge pixels.
    assert np.median(image_diff) < 0.005
    assert (image_diff > 0.02).mean() < 0.01
    assert ((node[..., 1] > 0) != (train[..., 1] > 0)).mean() < 0.01


@pytest.mark.slow
def test_tiny_lung_training_run_is_loaded_by_the_node(shared_data: Path, tmp_path: Path) -> None:
    from training.train_xray import main

    out = tmp_path / "xray_classifier" / "0.0.1"
    args = ["--data", str(shared_data), "--out", str(out), "--version", "0.0.1"]
    assert main([*args, "--limit-per-class", "2", "--views", "2"]) == 0

    for name in ("model.keras", "ood.npz", "model_card.md", "NOTICE", "predictions.csv"):
        assert (out / name).is_file(), name
    verify_checksums(out)
    assert "ood.npz" in (out / "SHA256SUMS").read_text()
    card = json.loads((out / "model_card.json").read_text())
    assert card["input"]["function"] == "dicom_node.pipelines.xray.preprocessing.lung_crop_input"
    assert card["gradcam_layer"] == card["ood"]["layer"] == "lung_features"
    assert "Apache" in card["architecture"]["weights_provenance"]
    # The hyper-parameters: the shipped config file, with the command line's override.
    config = card["extra_evaluations"]["Training"]["results"]["config"]
    assert config["file"] == "training/configs/xray_classifier.toml"
    assert len(config["sha256"]) == 64
    assert config["values"]["views"] == 2 and config["values"]["input_size"] == 320
    assert config["values"]["c_grid"] == [0.0003, 0.001, 0.003]
    loso = card["extra_evaluations"]["Leave one source out"]["results"]
    assert set(loso["per_held_out_source"]) == {"ieee", "kaggle", "mhh", "nih"}
    assert {t["metric"] for t in card["targets"]} >= {"macro_roc_auc", "heat_in_lungs.median"}
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["split"] for r in rows} == {"val", "test"}
    assert all(0.0 <= float(r["heat_in_lungs"]) <= 1.0 for r in rows)

    pipeline = XrayPipeline.load(models_dir=tmp_path)  # the segmentation: the node's own
    assert pipeline.model_info.version == "0.0.1"
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    raw = pipeline.predict(pipeline.preprocess([ds]))
    assert raw.probabilities.shape == (1, 3)
    assert raw.probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    assert raw.features.shape == (1, 1280)

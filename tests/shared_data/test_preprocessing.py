"""The shared preprocessing: the same picture gives the same model input from DICOM and PNG."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicom_node.pipelines.xray.preprocessing import (
    dataset_to_display,
    read_image,
    to_model_input,
)
from tests.support.factories import grey_dataset

SIZE = 224


def _xray_png(shared_data: Path, split: str = "val", source: str = "nih") -> Path:
    with (shared_data / "manifest.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["modality"] == "xray" and row["split"] == split and row["source"] == source:
                return shared_data / row["path"]
    raise AssertionError("no such image in the manifest")


def _input_from_png(path: Path) -> np.ndarray:
    return to_model_input(read_image(path).display, SIZE)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_training_png_as_12_bit_dicom_gives_the_same_input(
    shared_data: Path, tmp_path: Path, photometric: str
) -> None:
    """A data set PNG re-encoded as 12-bit DICOM with rescale and a window: same input."""
    png = _xray_png(shared_data)
    grey = np.asarray(Image.open(png).convert("L"), dtype=np.int32)
    values = 255 - grey if photometric == "MONOCHROME1" else grey
    stored = values * 16 + 7  # 12-bit stored values
    # Modality LUT maps to -1000..3080; the window covers the whole range (no clipping).
    ds = grey_dataset(
        stored, photometric, 12, slope=1.0, intercept=-1000.0, window=(1040.0, 4096.0)
    )
    path = tmp_path / "as_dicom.dcm"
    ds.save_as(path, enforce_file_format=True)

    loaded = read_image(path)
    assert loaded.dataset is not None
    from_dicom = to_model_input(loaded.display, SIZE)
    from_png = _input_from_png(png)
    assert np.abs(from_dicom - from_png).max() < 1e-3


def test_monochrome1_is_displayed_inverted(shared_data: Path) -> None:
    grey = np.asarray(Image.open(_xray_png(shared_data)).convert("L"), dtype=np.int32)
    mono2 = dataset_to_display(grey_dataset(grey * 16, "MONOCHROME2", 12))
    mono1 = dataset_to_display(grey_dataset(grey * 16, "MONOCHROME1", 12))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    # Bright (dense) mediastinum vs dark lungs in the MONOCHROME2 rendering of a chest film.
    rows, cols = mono2.shape
    centre = mono2[rows // 3 : 2 * rows // 3, cols // 2 - cols // 20 : cols // 2 + cols // 20]
    lung = mono2[rows // 3 : 2 * rows // 3, cols // 5 : cols // 3]
    assert centre.mean() > lung.mean()


def test_signed_16_bit_dicom_without_window_uses_its_range(shared_data: Path) -> None:
    grey = np.asarray(Image.open(_xray_png(shared_data)).convert("L"), dtype=np.int32)
    ds = grey_dataset(grey * 100 - 12000, "MONOCHROME2", 16, signed=True)
    display = dataset_to_display(ds)
    assert display.min() == 0.0 and display.max() == 1.0
    np.testing.assert_allclose(
        to_model_input(display, SIZE), to_model_input(grey / 255.0, SIZE), atol=1e-3
    )


def test_8_bit_dicom_matches_png(shared_data: Path) -> None:
    png = _xray_png(shared_data, source="kaggle224")
    grey = np.asarray(Image.open(png).convert("L"))
    display = dataset_to_display(grey_dataset(grey, "MONOCHROME2", 8, window=(127.5, 256.0)))
    np.testing.assert_allclose(to_model_input(display, SIZE), _input_from_png(png), atol=1e-3)


def test_16_bit_png_and_colour_jpeg_match_the_8_bit_png(shared_data: Path, tmp_path: Path) -> None:
    png = _xray_png(shared_data)
    grey = np.asarray(Image.open(png).convert("L"), dtype=np.uint16)
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(grey * 257).save(sixteen)
    jpeg = tmp_path / "colour.jpg"
    Image.open(png).convert("RGB").save(jpeg, quality=95)

    reference = _input_from_png(png)
    np.testing.assert_allclose(_input_from_png(sixteen), reference, atol=1e-3)
    # JPEG is lossy: close on average, not exact.
    assert np.abs(_input_from_png(jpeg) - reference).mean() < 0.02


def test_training_loader_uses_the_same_function(shared_data: Path) -> None:
    from training.data import load_inputs, read_manifest

    records = [r for r in read_manifest(shared_data) if r.modality == "xray"][:3]
    loaded = load_inputs(records, shared_data, 96)
    for record, array in zip(records, loaded, strict=True):
        expected = to_model_input(read_image(shared_data / record.path).display, 96)
        np.testing.assert_array_equal(array, expected)

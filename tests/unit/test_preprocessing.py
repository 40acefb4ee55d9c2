"""The shared preprocessing on pydicom-data and generated images.

The same checks on the shared data set's images are in ``tests/shared_data``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from dicom_node.pipelines.xray.preprocessing import (
    PreprocessingError,
    dataset_to_display,
    display_to_uint8,
    read_image,
    to_model_input,
)
from tests.support.factories import grey_dataset

SIZE = 224


def _input_from_png(path: Path) -> np.ndarray:
    return to_model_input(read_image(path).display, SIZE)


def test_real_cr_as_dicom_and_as_png_give_the_same_input(tmp_path: Path) -> None:
    """RG1 (MONOCHROME1, 15 bit) through the DICOM path, and its display image saved as PNG."""
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    display = dataset_to_display(ds)
    assert display.shape == (ds.Rows, ds.Columns)
    png = tmp_path / "rg1.png"
    Image.fromarray(display_to_uint8(display)).save(png)

    from_dicom = to_model_input(display, SIZE)
    from_png = _input_from_png(png)
    assert from_dicom.shape == from_png.shape == (SIZE, SIZE, 1)
    # Only the PNG's 8-bit quantisation differs.
    assert np.abs(from_dicom - from_png).max() < 0.02
    assert np.abs(from_dicom - from_png).mean() < 0.003


def test_dicom_files_are_read_as_dicom_even_with_a_tiff_preamble() -> None:
    """RG1_UNCR.dcm is also a valid TIFF: read as TIFF it would not be inverted (MONOCHROME1)."""
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        loaded = read_image(Path(get_testdata_file(name)))
        assert loaded.dataset is not None
        np.testing.assert_array_equal(loaded.display, dataset_to_display(loaded.dataset))


def test_jpeg2000_dicom_matches_uncompressed() -> None:
    plain = dataset_to_display(pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm")))
    j2k = dataset_to_display(pydicom.dcmread(get_testdata_file("RG1_J2KR.dcm")))
    np.testing.assert_allclose(to_model_input(j2k, SIZE), to_model_input(plain, SIZE), atol=1e-5)


def test_model_input_is_square_and_stretched() -> None:
    rng = np.random.default_rng(0)
    wide = (0.3 + 0.2 * rng.random((300, 500))).astype(np.float32)  # a dim, low-contrast image
    x = to_model_input(wide, 128)
    assert x.shape == (128, 128, 1) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert not to_model_input(np.full((50, 60), 0.5, np.float32), 32).any()  # flat -> zeros


def test_non_images_are_rejected(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(PreprocessingError):
        read_image(text)
    with pytest.raises(PreprocessingError):
        read_image(tmp_path / "missing.png")
    no_pixels = grey_dataset(np.zeros((4, 4)), "MONOCHROME2", 12)
    del no_pixels.PixelData
    with pytest.raises(PreprocessingError, match="no pixel data"):
        dataset_to_display(no_pixels)

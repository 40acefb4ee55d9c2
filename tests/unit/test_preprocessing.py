"""The shared preprocessing: the same picture gives the same model input from DICOM and PNG."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicom_node.preprocessing import (
    PreprocessingError,
    body_bounding_box,
    dataset_to_display,
    display_to_uint8,
    hu_slice_to_display,
    lung_window,
    read_image,
    to_model_input,
)

SIZE = 224


def _dataset(
    stored: np.ndarray,
    photometric: str,
    bits_stored: int,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    signed: bool = False,
) -> Dataset:
    """A minimal DX-like dataset around ``stored`` pixel values."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits_stored > 8 else 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    dtype = (np.int16 if signed else np.uint16) if bits_stored > 8 else np.uint8
    ds.PixelData = stored.astype(dtype).tobytes()
    return ds


def _xray_png(shared_data: Path, split: str = "val", source: str = "nih") -> Path:
    with (shared_data / "manifest.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["modality"] == "xray" and row["split"] == split and row["source"] == source:
                return shared_data / row["path"]
    raise AssertionError("no such image in the manifest")


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
    ds = _dataset(stored, photometric, 12, slope=1.0, intercept=-1000.0, window=(1040.0, 4096.0))
    path = tmp_path / "as_dicom.dcm"
    ds.save_as(path, enforce_file_format=True)

    loaded = read_image(path)
    assert loaded.dataset is not None
    from_dicom = to_model_input(loaded.display, SIZE)
    from_png = _input_from_png(png)
    assert np.abs(from_dicom - from_png).max() < 1e-3


def test_monochrome1_is_displayed_inverted(shared_data: Path) -> None:
    grey = np.asarray(Image.open(_xray_png(shared_data)).convert("L"), dtype=np.int32)
    mono2 = dataset_to_display(_dataset(grey * 16, "MONOCHROME2", 12))
    mono1 = dataset_to_display(_dataset(grey * 16, "MONOCHROME1", 12))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    # Bright (dense) mediastinum vs dark lungs in the MONOCHROME2 rendering of a chest film.
    rows, cols = mono2.shape
    centre = mono2[rows // 3 : 2 * rows // 3, cols // 2 - cols // 20 : cols // 2 + cols // 20]
    lung = mono2[rows // 3 : 2 * rows // 3, cols // 5 : cols // 3]
    assert centre.mean() > lung.mean()


def test_signed_16_bit_dicom_without_window_uses_its_range(shared_data: Path) -> None:
    grey = np.asarray(Image.open(_xray_png(shared_data)).convert("L"), dtype=np.int32)
    ds = _dataset(grey * 100 - 12000, "MONOCHROME2", 16, signed=True)
    display = dataset_to_display(ds)
    assert display.min() == 0.0 and display.max() == 1.0
    np.testing.assert_allclose(
        to_model_input(display, SIZE), to_model_input(grey / 255.0, SIZE), atol=1e-3
    )


def test_8_bit_dicom_matches_png(shared_data: Path) -> None:
    png = _xray_png(shared_data, source="kaggle224")
    grey = np.asarray(Image.open(png).convert("L"))
    display = dataset_to_display(_dataset(grey, "MONOCHROME2", 8, window=(127.5, 256.0)))
    np.testing.assert_allclose(to_model_input(display, SIZE), _input_from_png(png), atol=1e-3)


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


def test_model_input_is_square_and_stretched() -> None:
    rng = np.random.default_rng(0)
    wide = (0.3 + 0.2 * rng.random((300, 500))).astype(np.float32)  # a dim, low-contrast image
    x = to_model_input(wide, 128)
    assert x.shape == (128, 128, 1) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert not to_model_input(np.full((50, 60), 0.5, np.float32), 32).any()  # flat -> zeros


def test_training_loader_uses_the_same_function(shared_data: Path) -> None:
    from training.data import load_inputs, read_manifest

    records = [r for r in read_manifest(shared_data) if r.modality == "xray"][:3]
    loaded = load_inputs(records, shared_data, 96)
    for record, array in zip(records, loaded, strict=True):
        expected = to_model_input(read_image(shared_data / record.path).display, 96)
        np.testing.assert_array_equal(array, expected)


def test_non_images_are_rejected(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(PreprocessingError):
        read_image(text)
    with pytest.raises(PreprocessingError):
        read_image(tmp_path / "missing.png")
    no_pixels = _dataset(np.zeros((4, 4)), "MONOCHROME2", 12)
    del no_pixels.PixelData
    with pytest.raises(PreprocessingError, match="no pixel data"):
        dataset_to_display(no_pixels)


def test_lung_window_and_body_crop(shared_data: Path) -> None:
    np.testing.assert_allclose(
        lung_window(np.array([-2000, -1350, -600, 150, 900])), [0.0, 0.0, 0.5, 1.0, 1.0]
    )
    path = sorted((shared_data / "ct_dicom" / "covid").glob("*.dcm"))[0]
    ds = pydicom.dcmread(path)
    hu = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
    r0, r1, c0, c1 = body_bounding_box(hu)
    assert 0 <= r0 < r1 <= ds.Rows and 0 <= c0 < c1 <= ds.Columns
    assert (r1 - r0) * (c1 - c0) < ds.Rows * ds.Columns  # air around the body is cut off
    display = hu_slice_to_display(hu)
    assert display.shape == (r1 - r0, c1 - c0)
    assert display.min() >= 0.0 and display.max() <= 1.0

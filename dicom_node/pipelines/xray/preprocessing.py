"""The one image preprocessing shared by training and the node (no train/serve skew).

Every image goes through two steps, whatever its format:

1. **Display image** (:func:`dataset_to_display`, :func:`pil_to_display`, :func:`read_image`):
   what a viewer shows, as float32 in [0, 1], MONOCHROME2 (bright = dense).  DICOM: Modality LUT,
   then VOI LUT or windowing from the header (full stored range when there is none), then
   MONOCHROME1 is inverted.  PNG/JPEG: the stored grey levels (8 or 16 bit, colour as luminance).
2. **Model input** (:func:`to_model_input`): squashed to a square ``size x size`` (the data set's
   sources differ in aspect ratio, which must not be a cue), then a robust intensity stretch
   between low/high percentiles of the central region, so that exposure, windowing and frames
   differ less between sources.

Training calls :func:`read_image` + :func:`to_model_input` on the PNGs; the node calls
:func:`dataset_to_display` + :func:`to_model_input` on DICOM.  A test checks that the same picture
gives the same input both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from dicom_node.errors import PreprocessingError
from dicom_node.pixels import LoadedImage as LoadedImage  # read_image's result
from dicom_node.pixels import decoded_pixels

__all__ = [
    "DEFAULT_CENTRAL_MARGIN",
    "DEFAULT_PERCENTILES",
    "LUNG_CROP_MARGIN",
    "LUNG_FADE_END",
    "LUNG_FADE_START",
    "REDUCING_GAP",
    "LoadedImage",
    "LungCrop",
    "PreprocessingError",
    "dataset_to_display",
    "display_to_uint8",
    "lung_crop_box",
    "lung_crop_input",
    "lung_fade",
    "lung_weights",
    "mask_box",
    "pil_to_display",
    "read_image",
    "resize_mask",
    "resize_square",
    "robust_stretch",
    "to_model_input",
]

# Robust intensity stretch: percentiles of the central part of the (resized) image, where the
# chest is; the margins often hold frames, labels and collimation that should not set the scale.
DEFAULT_PERCENTILES: tuple[float, float] = (1.0, 99.0)
DEFAULT_CENTRAL_MARGIN = 0.1
# Resizes by more than this factor start with an integer box reduction (see resize_square).
REDUCING_GAP = 3.0


def display_to_uint8(display: np.ndarray) -> np.ndarray:
    """The display image as 8-bit MONOCHROME2 (what a viewer shows); one float temporary."""
    scaled = np.clip(display, 0.0, 1.0)
    scaled *= 255.0
    np.rint(scaled, out=scaled)
    return np.asarray(scaled, dtype=np.uint8)


def _voi_output_range(ds: Dataset) -> tuple[float, float]:
    """Output range of the dataset's VOI transform, found by probing it with extreme inputs.

    pydicom's windowing maps into the stored value range (adjusted by rescale) and a VOI LUT into
    its entries; probing gives that range without re-implementing the standard's rules.
    """
    probe = np.array([-(2**31), 2**31 - 1], dtype=np.int64)
    lo, hi = (float(v) for v in apply_voi_lut(probe, ds, index=0))
    return (min(lo, hi), max(lo, hi))


def dataset_to_display(ds: Dataset) -> np.ndarray:
    """DICOM -> display image: Modality LUT, VOI LUT/windowing, MONOCHROME1 inverted; [0, 1].

    Grey images of up to 16 bits are mapped through a table of every possible stored value
    (the same transforms on at most 65536 values, looked up per pixel): memory is the decoded
    array plus the float32 result, where transforming the image itself made two float64
    copies of it (about 11 bytes per pixel beside a 16-bit decoded array of 2).
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise PreprocessingError("the DICOM object has no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise PreprocessingError(f"multi-frame images ({frames} frames) are not supported")
    try:
        pixels = decoded_pixels(ds)
    except Exception as exc:  # pydicom raises many types for unsupported encodings
        raise PreprocessingError(f"cannot decode the pixel data: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if pixels.ndim == 3:
        # Colour radiographs (rare, e.g. secondary captures): pydicom returns RGB.
        if pixels.shape[-1] != 3:
            raise PreprocessingError(f"unsupported pixel array shape {pixels.shape}")
        grey = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return _minmax(grey) if pixels.dtype != np.uint8 else grey / np.float32(255.0)
    if pixels.ndim != 2:
        raise PreprocessingError(f"unsupported pixel array shape {pixels.shape}")
    windowed = "WindowCenter" in ds or "VOILUTSequence" in ds
    if pixels.dtype.kind in "iu" and pixels.itemsize <= 2:
        index = pixels.view(f"u{pixels.itemsize}")
        codes = np.arange(1 << (8 * pixels.itemsize), dtype=index.dtype).view(pixels.dtype)
        values = apply_modality_lut(codes, ds)
        if windowed:
            return np.asarray(_windowed(values, ds, photometric)[index])
        display = np.asarray(np.asarray(values, dtype=np.float32)[index])
        return _stretched(display, photometric)
    values = apply_modality_lut(pixels, ds)
    if windowed:
        return _windowed(values, ds, photometric)
    return _stretched(np.asarray(values, dtype=np.float32), photometric)


def _windowed(values: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """Modality values -> display through the data set's VOI LUT or window."""
    lo, hi = _voi_output_range(ds)
    windowed = apply_voi_lut(values, ds, index=0)
    display = (np.asarray(windowed, dtype=np.float32) - np.float32(lo)) / np.float32(
        max(hi - lo, 1e-6)
    )
    display = np.clip(display, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        display = 1.0 - display
    return np.asarray(display, dtype=np.float32)


def _stretched(values: np.ndarray, photometric: str) -> np.ndarray:
    """float32 modality values -> display over their full range, in place."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        values[...] = 0.0
    else:
        values -= lo
        values /= hi - lo
    if photometric == "MONOCHROME1":
        np.subtract(1.0, values, out=values)
    return values


def _minmax(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)


def pil_to_display(image: Image.Image) -> np.ndarray:
    """PNG/JPEG -> display image in [0, 1]: stored grey levels; colour as luminance.

    Transparent images are composited on black, as the training data set was built.
    """
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float32)
        # 16-bit PNGs carry no window: use the stored range (the model input is stretched anyway).
        return _minmax(values)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    grey = image.convert("L") if image.mode != "L" else image
    return np.asarray(grey, dtype=np.float32) / np.float32(255.0)


def _has_dicom_preamble(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_dicom(path: Path) -> LoadedImage:
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise PreprocessingError(f"{path.name}: neither a DICOM nor a PNG/JPEG image") from exc
    return LoadedImage(path=path, display=dataset_to_display(ds), dataset=ds)


def read_image(path: Path) -> LoadedImage:
    """Read a DICOM, PNG or JPEG file into a display image; ``PreprocessingError`` otherwise.

    DICOM is recognised by its preamble first: some DICOM files carry a TIFF header in the
    preamble (dual-personality files, e.g. pydicom-data's RG1_UNCR.dcm), and read as TIFF they
    would skip the Modality/VOI LUT and MONOCHROME1 inversion.
    """
    path = Path(path)
    if not path.is_file():
        raise PreprocessingError(f"{path} is not a file")
    if _has_dicom_preamble(path):
        return _read_dicom(path)
    try:
        with Image.open(path) as image:
            image.load()
            return LoadedImage(path=path, display=pil_to_display(image))
    except (UnidentifiedImageError, OSError):
        pass  # not a PIL image: DICOM without preamble?
    return _read_dicom(path)


def robust_stretch(
    image: np.ndarray,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    margin: float = DEFAULT_CENTRAL_MARGIN,
) -> np.ndarray:
    """Stretch ``image`` so the given percentiles of its central region map to 0 and 1."""
    rows, cols = image.shape
    dr, dc = int(rows * margin), int(cols * margin)
    core = image[dr : rows - dr, dc : cols - dc]
    lo, hi = np.percentile(core, percentiles)
    if hi - lo < 1e-4:  # a flat image: nothing to stretch
        return np.zeros_like(image, dtype=np.float32)
    return np.asarray(np.clip((image - lo) / (hi - lo), 0.0, 1.0), dtype=np.float32)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size x size`` ignoring aspect ratio (antialiased bilinear, float32).

    An image more than ``REDUCING_GAP`` times larger than the target is first box-reduced by
    an integer factor (PIL's ``reducing_gap``): four times faster on a detector-size radiograph,
    and the same result for the data set's images (at most 512 px, at most 4x a 128 px input,
    which gives the integer factor 1: no reduction).
    """
    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)
    resized = Image.fromarray(image.astype(np.float32, copy=False), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP
    )
    return np.asarray(resized, dtype=np.float32)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A boolean mask resized to ``size x size``: 8-bit bilinear after a box reduction
    (``reducing_gap``), 8x cheaper than a float resize of a detector-size crop."""
    image = Image.fromarray(np.asarray(mask, np.uint8) * 255).resize(
        (size, size), Image.Resampling.BILINEAR, reducing_gap=2.0
    )
    return np.asarray(image) >= 128


def to_model_input(
    display: np.ndarray,
    size: int,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    margin: float = DEFAULT_CENTRAL_MARGIN,
) -> np.ndarray:
    """Display image (float [0, 1], any shape) -> model input, float32 ``(size, size, 1)``."""
    if display.ndim != 2:
        raise PreprocessingError(f"expected a 2-D grey image, got shape {display.shape}")
    square = resize_square(display, size)
    return np.asarray(robust_stretch(square, percentiles, margin)[..., np.newaxis])


# -- the X-ray classifier's input: the lung fields -------------------------------------------

# The crop box grows by this fraction of the lung box on each side: the apices, the
# costophrenic angles and the pleura stay in view even when the segmentation is a little tight.
LUNG_CROP_MARGIN = 0.08
# Outside the lung mask the input fades to black between these distances from the mask (in
# fractions of the input size): markers, tubes, text and collimation outside the lungs are the
# source-specific cues a classifier learns instead of the disease.
LUNG_FADE_START = 0.03
LUNG_FADE_END = 0.08


@dataclass(frozen=True)
class LungCrop:
    """The classifier's input and where it came from in the source image.

    ``model_input`` has two channels: the image in [0, 1], and the lung mask scaled to mean 1
    (:func:`lung_weights`), with which the model pools its features over the lungs only.
    """

    model_input: np.ndarray  # (size, size, 2) float32
    box: tuple[int, int, int, int]  # the crop: (row0, row1, col0, col1), half-open, source pixels


def lung_weights(mask: np.ndarray) -> np.ndarray:
    """The lung mask as pooling weights with mean 1: averaging them over any partition of the
    image (the model's feature cells) keeps the mean 1, so a weighted average pool is
    ``mean(features * weights)`` with no division in the model."""
    area = float(mask.mean())
    if area <= 0.0:
        return np.ones(mask.shape, np.float32)
    return np.asarray(mask, np.float32) / np.float32(area)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(row0, row1, col0, col1), half-open, of a boolean mask's True pixels; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def lung_crop_box(
    lung_box: tuple[int, int, int, int], shape: tuple[int, int], margin: float = LUNG_CROP_MARGIN
) -> tuple[int, int, int, int]:
    """The lung box grown by ``margin`` of its height/width on each side, inside the image."""
    r0, r1, c0, c1 = lung_box
    dr, dc = round((r1 - r0) * margin), round((c1 - c0) * margin)
    rows, cols = shape
    return (max(0, r0 - dr), min(rows, r1 + dr), max(0, c0 - dc), min(cols, c1 + dc))


def lung_fade(mask: np.ndarray, start: float, end: float) -> np.ndarray:
    """Weights in [0, 1]: 1 on and near the mask, falling linearly to 0 from ``start`` to
    ``end`` (fractions of the image's larger side) away from it."""
    from scipy import ndimage

    if not mask.any():
        return np.ones(mask.shape, np.float32)
    distance = ndimage.distance_transform_edt(~mask) / float(max(mask.shape))
    return np.asarray(np.clip((end - distance) / (end - start), 0.0, 1.0), dtype=np.float32)


def lung_crop_input(
    display: np.ndarray,
    lung_mask: np.ndarray,
    size: int,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    margin: float = LUNG_CROP_MARGIN,
    fade: tuple[float, float] | None = (LUNG_FADE_START, LUNG_FADE_END),
) -> LungCrop:
    """Display image + lung mask (same shape) -> the X-ray classifier's input.

    The lung fields' box (with ``margin``) is squashed to ``size x size``, stretched between the
    ``percentiles`` of the pixels inside the lungs (so exposure outside them does not set the
    scale), and faded to black away from the lungs (``fade``; None keeps the whole crop).  The
    second channel carries the lung mask (:func:`lung_weights`).
    """
    if display.ndim != 2 or display.shape != lung_mask.shape:
        raise PreprocessingError(
            f"display {display.shape} and lung mask {lung_mask.shape} must be one 2-D shape"
        )
    lung_box = mask_box(lung_mask)
    if lung_box is None:
        raise PreprocessingError("no lung fields to crop to")
    box = lung_crop_box(lung_box, (int(display.shape[0]), int(display.shape[1])), margin)
    r0, r1, c0, c1 = box
    image = resize_square(display[r0:r1, c0:c1], size)
    mask = resize_mask(lung_mask[r0:r1, c0:c1], size)
    inside = image[mask] if mask.any() else image.ravel()
    lo, hi = np.percentile(inside, percentiles)
    if hi - lo < 1e-4:
        stretched = np.zeros_like(image)
    else:
        stretched = np.clip((image - lo) / (hi - lo), 0.0, 1.0)
    if fade is not None:
        stretched = stretched * lung_fade(mask, *fade)
    model_input = np.stack([np.asarray(stretched, np.float32), lung_weights(mask)], axis=-1)
    return LungCrop(model_input=model_input, box=box)

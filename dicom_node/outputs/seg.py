"""The CT DICOM Segmentation: lungs and lesions as a BINARY SEG over the source slices.

Four non-overlapping segments: right lung and left lung *without lesions*, ground-glass
opacity, consolidation; the whole lung is the union.  Non-overlapping on purpose: highdicom then
takes a 3-D label map and skips its overlap check, which on a 4-D stack of 300 frames of
512x512 costs seconds and a gigabyte.  Frames are written only for slices that contain lung,
and highdicom omits empty frames per segment.  Masks are computed on the working grid and
repeated up to the source pixel size here (nearest neighbour), so each frame matches its
source slice and references it.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset

from dicom_node.domain import ModelInfo, OutputContext
from dicom_node.errors import OutputError
from dicom_node.outputs.codes import (
    ABNORMAL_STRUCTURE,
    ANATOMICAL_STRUCTURE,
    CONSOLIDATION,
    GROUND_GLASS_OPACITY,
    LEFT_LUNG,
    MASS,
    RIGHT_LUNG,
)
from dicom_node.outputs.common import (
    SEG_SERIES_NUMBER,
    algorithm_identification_sequence,
    equipment_kwargs,
    identity_kwargs,
    instance_uid,
    series_identity,
    source_key,
)

RIGHT_LUNG_SEGMENT, LEFT_LUNG_SEGMENT, GGO_SEGMENT, CONSOLIDATION_SEGMENT = 1, 2, 3, 4
FOCAL_SEGMENT = 5  # compact solid lesion (nodule or mass) with its halo; only when present

# (number, label, category, property type, colour as CIELab)
_SEGMENTS = (
    (RIGHT_LUNG_SEGMENT, "Right lung without lesions", ANATOMICAL_STRUCTURE, RIGHT_LUNG,
     (45.0, 10.0, -55.0)),
    (LEFT_LUNG_SEGMENT, "Left lung without lesions", ANATOMICAL_STRUCTURE, LEFT_LUNG,
     (60.0, -50.0, 40.0)),
    (GGO_SEGMENT, "Ground-glass opacity", ABNORMAL_STRUCTURE, GROUND_GLASS_OPACITY,
     (90.0, -5.0, 85.0)),
    (CONSOLIDATION_SEGMENT, "Consolidation", ABNORMAL_STRUCTURE, CONSOLIDATION,
     (55.0, 75.0, 55.0)),
    (FOCAL_SEGMENT, "Nodule or mass (not counted as involvement)", ABNORMAL_STRUCTURE, MASS,
     (50.0, 20.0, -70.0)),
)  # fmt: skip


def label_map(lungs: np.ndarray, lesions: np.ndarray) -> np.ndarray:
    """Working-grid segment numbers: lungs 1/2, overridden by lesions 3 (GGO) / 4 / 5."""
    out = lungs.astype(np.uint8, copy=True)
    lesion = lesions > 0
    out[lesion] = lesions[lesion] + 2
    return out


def upsample(labels: np.ndarray, step: int, shape: tuple[int, int]) -> np.ndarray:
    """Repeat working-grid pixels ``step`` times in-plane and crop to the source ``shape``."""
    if step == 1:
        return np.ascontiguousarray(labels[:, : shape[0], : shape[1]])
    n, rows, cols = labels.shape
    out = np.empty((n, rows * step, cols * step), dtype=labels.dtype)
    out.reshape(n, rows, step, cols, step)[...] = labels[:, :, None, :, None]
    return out[:, : shape[0], : shape[1]]


def build_ct_seg(
    lungs: np.ndarray,
    lesions: np.ndarray,
    step: int,
    datasets: Sequence[Dataset],
    context: OutputContext,
    model: ModelInfo,
    now: dt.datetime,
) -> hd.seg.Segmentation:
    """SEG over ``datasets``, the analysed slices in volume order (``lungs[k]`` is slice k)."""
    with_lung = np.flatnonzero(np.any(lungs > 0, axis=(1, 2)))
    if with_lung.size == 0:
        raise OutputError("no lung voxels: nothing to segment")
    first = datasets[0]
    shape = (int(first.Rows), int(first.Columns))
    pixels = upsample(label_map(lungs[with_lung], lesions[with_lung]), step, shape)
    sources = [datasets[int(k)] for k in with_lung]
    series = series_identity("segmentation", SEG_SERIES_NUMBER, model, datasets, context)
    algorithm = algorithm_identification_sequence(model)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=category,
            segmented_property_type=property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor(*lab),
        )
        for number, label, category, property_type, lab in _SEGMENTS
        if number != FOCAL_SEGMENT or np.any(pixels == FOCAL_SEGMENT)
    ]
    uid = instance_uid("seg", model, source_key(datasets))
    kwargs = {**identity_kwargs(series, uid, 1, context), **equipment_kwargs(model, context, now)}
    kwargs.pop("coding_schemes", None)  # the SEG uses only standard codes
    with warnings.catch_warnings():
        # highdicom warns about source person names it copies unchanged; not ours to fix.
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            content_label="LUNGS",
            content_description="Lungs and COVID-19 lesions (AI, unverified)",
            omit_empty_frames=True,
            **kwargs,
        )
    return seg

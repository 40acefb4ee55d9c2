"""Findings: what a pipeline concluded, in source-image geometry, before it becomes DICOM."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# Class keys of the X-ray classifier, in the model's output order.
XRAY_CLASSES: tuple[str, ...] = ("covid", "normal", "pneumonia_bac")


@dataclass(frozen=True)
class XrayImageFinding:
    """The classifier's result for one radiograph.

    ``heatmap`` is the Grad-CAM map in [0, 1] with the source image's shape (Rows, Columns).
    ``hot_region`` is a closed polygon around its hottest area, as (column, row) pixel
    coordinates of the source image (first point repeated last), ready for an SR SCOORD.
    ``display_image`` is the image as a viewer shows it (VOI applied, MONOCHROME2, uint8).
    """

    source_sop_instance_uid: str
    label: str
    probabilities: Mapping[str, float]
    heatmap: np.ndarray
    hot_region: np.ndarray
    display_image: np.ndarray


@dataclass(frozen=True)
class XrayFinding:
    """One finding per radiograph of the study; the study's label is the most confident one."""

    images: tuple[XrayImageFinding, ...]

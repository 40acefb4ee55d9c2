"""What the pipelines conclude and what the outputs are built from: findings and model identity.

Pipelines produce these types and output builders consume them; neither side imports the
other, both import this module.  It imports nothing of ours (standard library and numpy only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np

__all__ = [
    "BACKGROUND",
    "CONSOLIDATION",
    "FOCAL",
    "GGO",
    "LEFT_LUNG",
    "NO_LESION",
    "RIGHT_LUNG",
    "SEVERITY_LEVEL_NAMES",
    "XRAY_CLASSES",
    "Box",
    "CtAssessment",
    "CtCategory",
    "CtFeatures",
    "CtFinding",
    "FocalLesion",
    "Heatmap",
    "LungMeasurement",
    "ModelInfo",
    "NotAnalysedImage",
    "OutputContext",
    "Quantification",
    "RegionScore",
    "XrayFinding",
    "XrayImageFinding",
    "XraySeverity",
]

# -- model identity and output context ----------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the model behind a result; flows into the outputs' algorithm identification."""

    name: str
    version: str
    classes: tuple[str, ...] = ()
    family: str = "Artificial Intelligence"


@dataclass(frozen=True)
class OutputContext:
    """What the output builders need besides the finding.

    ``result_version`` counts the analyses of one study (1, 2, ... after late instances); it is
    written into series descriptions.  UIDs are derived from the source instances and the model
    version (see ``dicom_node.outputs.common``) so that re-running a job never duplicates results.

    ``unfinished``: the study was analysed although its sender never finished sending it (the
    association ended without release and no resend came within the hold): the outputs say
    that it may be incomplete.
    """

    result_version: int = 1
    manufacturer: str = "dicom-node"
    software_version: str = "0.1.0"
    institution_name: str | None = None
    unfinished: bool = False


# -- chest X-ray ----------------------------------------------------------------------------------

# Class keys of the X-ray classifier, in the model's output order.
XRAY_CLASSES: tuple[str, ...] = ("covid", "normal", "pneumonia_bac")


Box = tuple[int, int, int, int]  # (row0, row1, col0, col1), half-open, source pixels

# COVID-19 severity levels from the geographic extent score (see ``XraySeverity``).
SEVERITY_LEVEL_NAMES: tuple[str, ...] = ("none or minimal", "mild", "moderate", "severe")


@dataclass(frozen=True)
class XraySeverity:
    """COVID-19 pneumonia severity scores of one frontal radiograph, as predicted.

    The scores of Cohen et al. (Cureus 2020), as rated on the ieee8023 collection:
    ``geographic_extent`` 0-8 (per lung 0-4: none, <25 %, 25-50 %, 50-75 %, >75 % of the lung
    involved by ground glass or consolidation) and ``opacity`` 0-6 (per lung 0-3).  They are the
    expected scores: the regressor's scores given disease times the classifier's probability
    that the radiograph is not normal, so normal radiographs score near 0.  ``level``
    (0 none or minimal, 1 mild, 2 moderate, 3 severe) comes from the extent with the model
    card's thresholds.
    """

    geographic_extent: float
    opacity: float
    level: int

    @property
    def level_name(self) -> str:
        return SEVERITY_LEVEL_NAMES[self.level]


@dataclass(frozen=True)
class XrayImageFinding:
    """The classifier's result for one radiograph.

    ``heatmap`` is the Grad-CAM map in [0, 1] with the source image's shape (Rows, Columns):
    the map over the model input stretched back into ``crop_box``, zero elsewhere.
    ``hot_region`` is a closed polygon around its hottest area on the lung fields, as
    (column, row) pixel coordinates of the source image (first point repeated last), ready
    for an SR SCOORD.  ``display_image`` is the image as a viewer shows it (VOI applied,
    MONOCHROME2, uint8).

    Models that look at the lung fields also give ``lung_mask`` (bool, source shape), its
    outline (closed (column, row) polygons, one per lung field), ``lung_box`` (the mask's
    bounding box), ``crop_box`` (what the model saw: the lung box and a margin) and
    ``heat_in_lungs`` (share of the heatmap on the lung mask, in [0, 1]); whole-image models
    leave them None (``crop_box`` None means the whole image).

    ``severity``: the COVID-19 severity scores (models with a severity head).

    ``triage_suspicion``: the label rule (argmax of probability x weight, fitted for COVID-19
    sensitivity) chose COVID-19 although it is not the most probable class, so the label is a
    suspicion at a triage threshold rather than the model's best guess.
    """

    source_sop_instance_uid: str
    label: str
    probabilities: Mapping[str, float]
    heatmap: np.ndarray
    hot_region: np.ndarray
    display_image: np.ndarray
    lung_mask: np.ndarray | None = None
    lung_outline: tuple[np.ndarray, ...] = ()
    lung_box: Box | None = None
    crop_box: Box | None = None
    heat_in_lungs: float | None = None
    triage_suspicion: bool = False
    severity: XraySeverity | None = None  # None: no severity model for this classifier

    @property
    def top_class(self) -> str:
        """The most probable class (the label unless ``triage_suspicion``)."""
        return max(self.probabilities, key=lambda key: self.probabilities[key])


class Heatmap(Protocol):
    """A picture with a heatmap to draw (``classify --heatmap-dir``); ``XrayImageFinding``
    is one."""

    @property
    def display_image(self) -> np.ndarray: ...
    @property
    def heatmap(self) -> np.ndarray: ...
    @property
    def hot_region(self) -> np.ndarray: ...
    @property
    def lung_outline(self) -> tuple[np.ndarray, ...]: ...


@dataclass(frozen=True)
class NotAnalysedImage:
    """A radiograph of the study that was not analysed, and why (no patient data)."""

    source_sop_instance_uid: str
    reason: str


@dataclass(frozen=True)
class XrayFinding:
    """One finding per analysed radiograph of the study (the study's label is the most
    confident one), and the study's images that were not analysed."""

    images: tuple[XrayImageFinding, ...]
    not_analysed: tuple[NotAnalysedImage, ...] = ()


# -- chest CT -------------------------------------------------------------------------------------

# Lung label map values (working grid).
BACKGROUND, RIGHT_LUNG, LEFT_LUNG = 0, 1, 2
# Lesion label map values (working grid).  FOCAL: a compact solid lesion (nodule or mass),
# reported on its own and not counted as GGO/consolidation involvement.
NO_LESION, GGO, CONSOLIDATION, FOCAL = 0, 1, 2, 3


@dataclass(frozen=True)
class LungMeasurement:
    lung_ml: float
    ggo_ml: float
    consolidation_ml: float

    @property
    def lesion_ml(self) -> float:
        return self.ggo_ml + self.consolidation_ml

    @property
    def involvement_percent(self) -> float:
        return 100.0 * self.lesion_ml / self.lung_ml if self.lung_ml > 0 else 0.0

    @property
    def ggo_share_percent(self) -> float:
        """Share of the lesion volume that is ground glass."""
        return 100.0 * self.ggo_ml / self.lesion_ml if self.lesion_ml > 0 else 0.0

    @property
    def consolidation_share_percent(self) -> float:
        return 100.0 * self.consolidation_ml / self.lesion_ml if self.lesion_ml > 0 else 0.0


@dataclass(frozen=True)
class RegionScore:
    """One of five lobe-approximating regions; ``name`` says it is a zone, not a true lobe."""

    name: str
    lung: int
    lung_ml: float
    lesion_ml: float
    score: int

    @property
    def involvement_percent(self) -> float:
        return 100.0 * self.lesion_ml / self.lung_ml if self.lung_ml > 0 else 0.0


@dataclass(frozen=True)
class Quantification:
    right: LungMeasurement
    left: LungMeasurement
    regions: tuple[RegionScore, ...]

    @property
    def total(self) -> LungMeasurement:
        return LungMeasurement(
            lung_ml=self.right.lung_ml + self.left.lung_ml,
            ggo_ml=self.right.ggo_ml + self.left.ggo_ml,
            consolidation_ml=self.right.consolidation_ml + self.left.consolidation_ml,
        )

    @property
    def severity_score(self) -> int:
        return sum(region.score for region in self.regions)


class CtCategory(StrEnum):
    """RSNA consensus categories for COVID-19 pneumonia on CT (Simpson et al., Radiology:
    Cardiothoracic Imaging 2020), derived here from the 3-D quantification."""

    TYPICAL = "typical"
    INDETERMINATE = "indeterminate"
    ATYPICAL = "atypical"
    NEGATIVE = "negative"


@dataclass(frozen=True)
class FocalLesion:
    """A compact solid lesion (nodule or mass): volume, largest in-plane diameter, lung."""

    volume_ml: float
    diameter_mm: float
    lung: int
    centre_slice: int


@dataclass(frozen=True)
class CtFeatures:
    """The pattern behind the category, measured on GGO/consolidation (focal lesions apart).

    Shares are percent of the lesion volume: ``peripheral`` in the outer third of the lung
    (by distance to the pleura), ``lower`` in the lower half of the lung volume.
    ``peripheral_expected_percent`` is the lung's own volume share in that outer third, the
    value a lesion spread evenly would have.
    """

    involvement_percent: float
    right_involvement_percent: float
    left_involvement_percent: float
    bilateral: bool
    peripheral_share_percent: float
    peripheral_expected_percent: float
    lower_zone_share_percent: float
    ggo_share_percent: float
    consolidation_share_percent: float
    foci: int
    focal_lesions: int
    largest_focal_lesion_mm: float
    focal_lesion_volume_ml: float


@dataclass(frozen=True)
class CtAssessment:
    """The category, the features it rests on and the rule that decided it, in words."""

    category: CtCategory
    features: CtFeatures
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class CtFinding:
    """Result for one CT series.

    Masks are on the working grid: ``lungs[k, i, j]`` (0, 1 right, 2 left) and ``lesions``
    (0, 1 GGO, 2 consolidation, 3 focal solid lesion) describe source pixel
    ``(i * step, j * step)`` of the slice ``source_sop_instance_uids[k]``; slices are ordered
    along the slice normal.
    """

    series_instance_uid: str
    source_sop_instance_uids: tuple[str, ...]
    step: int
    lungs: np.ndarray
    lesions: np.ndarray
    quantification: Quantification
    assessment: CtAssessment
    focal_lesions: tuple[FocalLesion, ...]
    key_slices: tuple[int, ...]
    notes: tuple[str, ...]
    # The coronal plane through the lungs' centre: working-grid row ``coronal_row``, HU of
    # (slice, column) in slice order, for the coronal overview picture.
    coronal_row: int = 0
    coronal_hu: np.ndarray | None = None
    slice_spacing_mm: float = 0.0
    column_spacing_mm: float = 0.0
    slice_order_superior_last: bool = True

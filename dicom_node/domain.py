"""What the pipelines conclude and what the outputs are built from: findings and model identity.

Pipelines produce these types and output builders consume them; neither side imports the
other, both import this module.  It imports nothing of ours (standard library and numpy only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

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
    """

    result_version: int = 1
    manufacturer: str = "dicom-node"
    software_version: str = "0.1.0"
    institution_name: str | None = None


# -- chest X-ray ----------------------------------------------------------------------------------

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


# -- chest CT -------------------------------------------------------------------------------------

# Lung label map values (working grid).
BACKGROUND, RIGHT_LUNG, LEFT_LUNG = 0, 1, 2
# Lesion label map values (working grid).
NO_LESION, GGO, CONSOLIDATION = 0, 1, 2


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


@dataclass(frozen=True)
class CtFinding:
    """Result for one CT series.

    Masks are on the working grid: ``lungs[k, i, j]`` (0, 1 right, 2 left) and ``lesions``
    (0, 1 GGO, 2 consolidation) describe source pixel ``(i * step, j * step)`` of the slice
    ``source_sop_instance_uids[k]``; slices are ordered along the slice normal.
    """

    series_instance_uid: str
    source_sop_instance_uids: tuple[str, ...]
    step: int
    lungs: np.ndarray
    lesions: np.ndarray
    quantification: Quantification
    covid_probability: float
    classified_slices: tuple[int, ...]
    slice_probabilities: tuple[float, ...]
    key_slices: tuple[int, ...]
    notes: tuple[str, ...]

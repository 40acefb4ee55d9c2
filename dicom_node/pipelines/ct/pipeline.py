"""Chest CT COVID-19 assessment from the 3-D quantification: no slice classifier.

``preprocess``  choose the series (``ct_series``), read it as int16 HU on the working grid,
                segment the lungs (``ct_lungs``).
``predict``     lesions (``ct_quant``): GGO and consolidation, compact solid lesions apart
                (``ct_focal``).
``postprocess`` measurements, the pattern features and the RSNA category (``ct_pattern``),
                key slices.

Why no classifier: the 2-D slice classifier this pipeline used to carry learned its training
sources (one public collection of figure crops) and called every real chest CT COVID-19,
nodule and cancer cases included.  The category follows the published RSNA consensus
reporting language from what is measured, so each call can be checked against its features.

A study without an analysable series (single slices, too few slices, gaps, non-axial
reformats, no lungs found) raises ``NotAnalysable`` with the reason (the job is ``ignored``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydicom import Dataset

from dicom_node.domain import (
    LEFT_LUNG,
    RIGHT_LUNG,
    CtCategory,
    CtFeatures,
    CtFinding,
    FocalLesion,
    LungMeasurement,
    ModelInfo,
)
from dicom_node.errors import NotAnalysable
from dicom_node.pipelines.base import Pipeline
from dicom_node.pipelines.ct.focal import separate_focal_lesions
from dicom_node.pipelines.ct.lungs import LungSegmentation, segment_lungs
from dicom_node.pipelines.ct.pattern import assess, measure_features
from dicom_node.pipelines.ct.quant import quantify, segment_lesions
from dicom_node.pipelines.ct.series import CtVolume, assemble, select_series

if TYPE_CHECKING:
    from dicom_node.pixels import LoadedImage

log = logging.getLogger(__name__)

# The version of the measurement rules; it flows into the outputs and their derived UIDs.
ASSESSMENT_VERSION = "2.0.0"
MIN_LUNG_ML = 800.0  # less than this is not a chest CT with both lungs in the field of view
KEY_IMAGES = 3
KEY_IMAGE_MIN_GAP_MM = 20.0


@dataclass(frozen=True)
class CtPrepared:
    volume: CtVolume
    lungs: LungSegmentation
    notes: tuple[str, ...]


@dataclass(frozen=True)
class CtLesions:
    labels: np.ndarray  # uint8 working grid: 0, GGO, CONSOLIDATION, FOCAL
    focal: tuple[FocalLesion, ...]


class CtPipeline(Pipeline[CtPrepared, CtLesions, CtFinding]):
    name: ClassVar[str] = "ct"

    def __init__(self) -> None:
        self.model_info = ModelInfo(
            name="ct_covid_assessment",
            version=ASSESSMENT_VERSION,
            classes=tuple(c.value for c in CtCategory),
            family="Mathematical Model",
        )

    @classmethod
    def load(cls, models_dir: Path | None = None) -> CtPipeline:
        """No model file: the assessment is measurement rules (``models_dir`` is ignored)."""
        return cls()

    def preprocess(self, sources: Sequence[Dataset]) -> CtPrepared:
        choice = select_series(sources)
        volume = assemble(choice.datasets)
        lungs = segment_lungs(volume)
        lung_ml = lungs.volume_ml(volume.voxel_ml)
        if lung_ml < MIN_LUNG_ML:
            raise NotAnalysable(
                f"no lungs found ({lung_ml:.0f} mL of lung, less than {MIN_LUNG_ML:.0f} mL): "
                "not a chest CT, or the lungs are not in the field of view"
            )
        for side, code in (("right", RIGHT_LUNG), ("left", LEFT_LUNG)):
            if lungs.volume_ml(volume.voxel_ml, code) == 0:
                lungs = _with_note(lungs, f"no {side} lung found")
        notes = choice.notes + lungs.notes
        for note in notes:
            log.info("CT series: %s", note)
        return CtPrepared(volume, lungs, notes)

    def predict(self, prepared: CtPrepared) -> CtLesions:
        volume, lungs = prepared.volume, prepared.lungs.labels
        lesions = segment_lesions(volume, lungs)
        focal = separate_focal_lesions(volume, lungs, lesions)
        return CtLesions(lesions, focal)

    def postprocess(self, raw: CtLesions, prepared: CtPrepared) -> CtFinding:
        volume = prepared.volume
        lungs = prepared.lungs.labels
        quantification = quantify(volume, lungs, raw.labels)
        features = measure_features(volume, lungs, raw.labels, quantification, raw.focal)
        return CtFinding(
            series_instance_uid=str(volume.datasets[0].SeriesInstanceUID),
            source_sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in volume.datasets),
            step=volume.step,
            lungs=lungs,
            lesions=raw.labels,
            quantification=quantification,
            assessment=assess(features),
            focal_lesions=raw.focal,
            key_slices=key_slices(lungs, raw.labels, volume.slice_spacing),
            notes=prepared.notes,
            coronal_row=(row := coronal_row(lungs)),
            coronal_hu=np.ascontiguousarray(volume.hu[:, row, :]),
            slice_spacing_mm=volume.slice_spacing,
            column_spacing_mm=volume.spacing[2],
            slice_order_superior_last=bool(volume.normal[2] > 0),
        )

    def run_each(self, images: Sequence[LoadedImage]) -> list[CtFinding | str]:
        reason = "a single CT slice: the CT assessment needs the whole axial series (a directory)"
        return [reason for _ in images]

    def summarise(self, finding: CtFinding) -> dict[str, Any]:
        q = finding.quantification
        assessment = finding.assessment
        return {
            "pipeline": self.name,
            "label": assessment.category.value,
            "ct_category": assessment.category.value,
            "features": features_record(assessment.features),
            "reasons": list(assessment.reasons),
            **_lung_summary(q.total),
            "severity_score": q.severity_score,
            "severity_regions": [
                {
                    "region": region.name,
                    "involvement_percent": round(region.involvement_percent, 2),
                    "score": region.score,
                }
                for region in q.regions
            ],
            "right_lung": _lung_summary(q.right),
            "left_lung": _lung_summary(q.left),
            "focal_lesions": [
                {
                    "lung": "right" if lesion.lung == RIGHT_LUNG else "left",
                    "volume_ml": round(lesion.volume_ml, 1),
                    "diameter_mm": round(lesion.diameter_mm, 1),
                }
                for lesion in finding.focal_lesions
            ],
            "slices": len(finding.source_sop_instance_uids),
            "notes": list(finding.notes),
        }


def features_record(features: CtFeatures) -> dict[str, Any]:
    """The features as JSON: numbers rounded, names carrying their unit."""
    record: dict[str, Any] = {}
    for key, value in asdict(features).items():
        record[key] = round(value, 2) if isinstance(value, float) else value
    return record


def _lung_summary(m: LungMeasurement) -> dict[str, float]:
    return {
        "involvement_percent": round(m.involvement_percent, 2),
        "lung_volume_ml": round(m.lung_ml, 1),
        "lesion_volume_ml": round(m.lesion_ml, 1),
        "ggo_volume_ml": round(m.ggo_ml, 1),
        "consolidation_volume_ml": round(m.consolidation_ml, 1),
        "ggo_share_percent": round(m.ggo_share_percent, 1),
        "consolidation_share_percent": round(m.consolidation_share_percent, 1),
    }


def _with_note(lungs: LungSegmentation, note: str) -> LungSegmentation:
    return LungSegmentation(labels=lungs.labels, airway=lungs.airway, notes=(*lungs.notes, note))


def coronal_row(lungs: np.ndarray) -> int:
    """The working-grid row (coronal plane) with the largest lung cross-section."""
    return int(np.argmax(np.count_nonzero(lungs, axis=(0, 2))))


def key_slices(
    lungs: np.ndarray, lesions: np.ndarray, slice_spacing: float, count: int = KEY_IMAGES
) -> tuple[int, ...]:
    """Slices with the largest lesion area (lung area when there is no lesion), spread apart.

    Greedy: take the best slice, skip its neighbours within ``KEY_IMAGE_MIN_GAP_MM``, repeat.
    Returned in slice order.
    """
    score = np.count_nonzero(lesions, axis=(1, 2)).astype(np.float64)
    if not score.any():
        score = np.count_nonzero(lungs, axis=(1, 2)).astype(np.float64)
    gap = max(1, round(KEY_IMAGE_MIN_GAP_MM / max(slice_spacing, 1e-3)))
    chosen: list[int] = []
    for k in np.argsort(-score, kind="stable"):
        if score[k] <= 0 or len(chosen) == count:
            break
        if all(abs(int(k) - c) >= gap for c in chosen):
            chosen.append(int(k))
    return tuple(sorted(chosen))

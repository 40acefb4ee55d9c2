"""Chest CT COVID-19 assessment: lung quantification, severity score and a slice classifier.

``preprocess``  choose the series (``ct_series``), read it as int16 HU on the working grid,
                segment the lungs (``ct_lungs``), pick and decode the slices to classify.
``predict``     the 2-D slice classifier on those slices, in batches.
``postprocess`` lesions and measurements (``ct_quant``), the study probability, key slices.

Study probability: the classifier sees at most ``MAX_CLASSIFIED_SLICES`` slices, evenly
spaced over the slices whose lung area is at least ``MIN_LUNG_AREA_FRACTION`` of the largest
(slices like the training images, not apex or base slivers).  The study probability is the mean
of the highest quarter of those slice probabilities: COVID-19 changes are often patchy, so the
plain mean would dilute them, while the single maximum would follow one noisy slice.

A study without an analysable series (single slices such as the TCIA samples, too few slices,
gaps, non-axial reformats, no lungs found) raises ``NotAnalysable`` with the reason (the job is
``ignored``); the ``classify`` command gives single CT slices a slice-level probability instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from pydicom import Dataset

from dicom_node.domain import LEFT_LUNG, RIGHT_LUNG, CtFinding, LungMeasurement, ModelInfo
from dicom_node.errors import NotAnalysable, PipelineError
from dicom_node.pipelines.base import Pipeline
from dicom_node.pipelines.ct_lungs import LungSegmentation, segment_lungs
from dicom_node.pipelines.ct_quant import quantify, segment_lesions
from dicom_node.pipelines.ct_series import CtVolume, assemble, select_series
from dicom_node.pixels import hu_image

log = logging.getLogger(__name__)

QUANTIFICATION_VERSION = "1"
MIN_LUNG_ML = 800.0  # less than this is not a chest CT with both lungs in the field of view
MAX_CLASSIFIED_SLICES = 32
MIN_LUNG_AREA_FRACTION = 0.25
TOP_FRACTION = 0.25  # the study probability is the mean of this top share of slices
KEY_IMAGES = 3
KEY_IMAGE_MIN_GAP_MM = 20.0


class SliceClassifier(Protocol):
    """What the pipeline needs from the slice classifier (``CtSliceClassifier`` has it)."""

    model_info: ModelInfo

    def predict_hu_slices(self, hu: np.ndarray) -> np.ndarray:
        """``(n, rows, cols)`` HU -> ``(n,)`` P(COVID-19)."""
        ...

    def warm_up(self) -> None:
        """Trace the compiled model once."""
        ...


@dataclass(frozen=True)
class CtPrepared:
    volume: CtVolume
    lungs: LungSegmentation
    classified: np.ndarray  # volume slice indices given to the classifier
    slices_hu: np.ndarray  # (n, rows, cols) int16 full-resolution HU of those slices
    notes: tuple[str, ...]


class CtPipeline(Pipeline[CtPrepared, np.ndarray, CtFinding]):
    name: ClassVar[str] = "ct"

    def __init__(self, classifier: SliceClassifier) -> None:
        self.classifier = classifier
        info = classifier.model_info
        self.model_info = ModelInfo(
            name="ct_covid_assessment",
            version=f"{info.version}-q{QUANTIFICATION_VERSION}",
            classes=("covid", "noncovid"),
        )

    @classmethod
    def load(cls, models_dir: Path | None = None) -> CtPipeline:
        """The pipeline with the shipped slice classifier (checksum-verified)."""
        from dicom_node.pipelines.ct_slice_classifier import CtSliceClassifier

        return cls(CtSliceClassifier.load(models_dir))

    def warm_up(self) -> None:
        self.classifier.warm_up()

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
        classified = classification_slices(lungs.labels)
        slices_hu = np.stack([hu_image(volume.datasets[k]) for k in classified])
        notes = choice.notes + lungs.notes
        for note in notes:
            log.info("CT series: %s", note)
        return CtPrepared(volume, lungs, classified, slices_hu, notes)

    def predict(self, prepared: CtPrepared) -> np.ndarray:
        hu = prepared.slices_hu.astype(np.float32)
        probabilities = np.asarray(self.classifier.predict_hu_slices(hu), dtype=np.float64)
        if probabilities.shape != (len(prepared.classified),):
            raise ValueError(f"classifier returned shape {probabilities.shape}")
        return probabilities

    def postprocess(self, raw: np.ndarray, prepared: CtPrepared) -> CtFinding:
        volume = prepared.volume
        lungs = prepared.lungs.labels
        lesions = segment_lesions(volume, lungs)
        quantification = quantify(volume, lungs, lesions)
        return CtFinding(
            series_instance_uid=str(volume.datasets[0].SeriesInstanceUID),
            source_sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in volume.datasets),
            step=volume.step,
            lungs=lungs,
            lesions=lesions,
            quantification=quantification,
            covid_probability=aggregate_probability(raw),
            classified_slices=tuple(int(k) for k in prepared.classified),
            slice_probabilities=tuple(float(p) for p in raw),
            key_slices=key_slices(lungs, lesions, volume.slice_spacing),
            notes=prepared.notes,
        )

    def summarise(self, finding: CtFinding) -> dict[str, Any]:
        q = finding.quantification
        total = q.total
        return {
            "pipeline": self.name,
            "label": "covid" if finding.covid_probability >= 0.5 else "noncovid",
            "covid_probability": round(finding.covid_probability, 4),
            **_lung_summary(total),
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
            "slices": len(finding.source_sop_instance_uids),
            "slices_classified": len(finding.classified_slices),
            "notes": list(finding.notes),
        }


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


def classification_slices(lungs: np.ndarray, limit: int = MAX_CLASSIFIED_SLICES) -> np.ndarray:
    """Evenly spaced slices among those with a substantial lung cross-section."""
    area = np.count_nonzero(lungs, axis=(1, 2))
    candidates = np.flatnonzero(area >= MIN_LUNG_AREA_FRACTION * area.max())
    if len(candidates) <= limit:
        return candidates
    picks = np.linspace(0, len(candidates) - 1, limit).round().astype(int)
    return np.asarray(candidates[np.unique(picks)])


def aggregate_probability(slice_probabilities: np.ndarray) -> float:
    """Mean of the highest ``TOP_FRACTION`` of slice probabilities (at least one slice)."""
    values = np.sort(np.asarray(slice_probabilities, dtype=np.float64))[::-1]
    if values.size == 0:
        raise PipelineError("no slice could be classified")
    top = max(1, math.ceil(TOP_FRACTION * values.size))
    return float(values[:top].mean())


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

"""COVID-19 severity on a frontal radiograph: geographic extent and opacity scores, and a level.

The severity head (``models/xray_severity/<version>/``, trained by
``training.train_xray_severity``) is linear: the X-ray classifier's lung-pooled features and a
few intensity statistics of the lung fields in the classifier's input
(:func:`lung_intensity_statistics`, shared with training) map to the two scores *given disease*
(it was fitted on COVID-19 radiographs only).  The reported scores are their expectation over
the classifier's belief, ``(1 - p(normal)) * scores``, so a radiograph the classifier finds
normal scores near 0 instead of near the COVID-19 average.  The level (0-3) comes from the
expected geographic extent with the card's thresholds.

A head reads one classifier's features: its card names the classifier and version, and
:meth:`SeverityHead.for_classifier` finds the newest head made for the classifier at hand
(none: the node reports no severity, it does not guess).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.domain import SEVERITY_LEVEL_NAMES, XraySeverity
from dicom_node.errors import ModelStoreError, PipelineError
from dicom_node.pipelines.model_card import SeverityCard
from dicom_node.pipelines.model_store import (
    CARD_FILE,
    CHECKSUM_FILE,
    artefact_directory,
    artefact_versions,
    checksummed_files,
    read_severity_card,
)

__all__ = [
    "BRIGHT",
    "LUNG_STATISTICS",
    "MODEL_NAME",
    "SCORES",
    "SeverityHead",
    "lung_intensity_statistics",
    "severity_level",
    "severity_record",
]

log = logging.getLogger(__name__)

MODEL_NAME = "xray_severity"
SCORES = ("geographic_extent", "opacity")
LUNG_STATISTICS = 12  # len(lung_intensity_statistics(...))
BRIGHT = 0.6  # input intensity above which a lung pixel counts as "white" (opacity)


def lung_intensity_statistics(model_input: np.ndarray) -> np.ndarray:
    """Brightness of the lung fields in a lung-crop model input (size, size, 2).

    For the whole lung mask, its lower half and its upper half (by rows of the mask's bounding
    box): the mean, the 25th and 75th percentiles and the share of pixels brighter than
    ``BRIGHT``.  Opacities make the lungs whiter, more so at the bases in COVID-19; the
    contrast stretch of the input is per lung field, so these compare within one image.
    """
    image = np.asarray(model_input[..., 0], np.float32)
    mask = np.asarray(model_input[..., 1]) > 0
    out = np.zeros(LUNG_STATISTICS, np.float32)
    if not mask.any():
        return out
    rows = np.flatnonzero(mask.any(axis=1))
    middle = (int(rows[0]) + int(rows[-1])) // 2
    lower = np.zeros_like(mask)
    lower[middle:] = True
    for k, part in enumerate((mask, mask & lower, mask & ~lower)):
        pixels = image[part]
        if pixels.size == 0:
            continue
        q25, q75 = np.percentile(pixels, [25, 75])
        out[4 * k : 4 * k + 4] = (pixels.mean(), q25, q75, (pixels > BRIGHT).mean())
    return out


def severity_level(extent: float, thresholds: Sequence[float]) -> int:
    """0-3: how many of the (ascending) thresholds the extent reaches."""
    return int(sum(extent >= t for t in thresholds))


class SeverityHead:
    """The card's linear map, the gate and the level rule."""

    def __init__(self, card: SeverityCard, weights: np.ndarray, bias: np.ndarray) -> None:
        names = tuple(score.name for score in card.scores)
        if names != SCORES:
            raise PipelineError(f"severity card has scores {names}, expected {SCORES}")
        if card.levels.names != SEVERITY_LEVEL_NAMES:
            raise PipelineError(f"severity card has levels {card.levels.names}")
        if weights.ndim != 2 or weights.shape[1] != len(SCORES) or bias.shape != (len(SCORES),):
            raise PipelineError(
                f"{card.file}: weights {weights.shape} and bias {bias.shape} do not fit "
                f"{len(SCORES)} scores"
            )
        self.card = card
        self.weights = weights.astype(np.float32)
        self.bias = bias.astype(np.float32)
        self.maximum = np.array([score.maximum for score in card.scores], np.float32)
        self.minimum = np.array([score.minimum for score in card.scores], np.float32)
        self.thresholds = card.levels.thresholds

    @property
    def feature_dimensions(self) -> int:
        """The classifier feature count this head expects (without the lung statistics)."""
        extra = LUNG_STATISTICS if self.card.features.lung_statistics else 0
        return int(self.weights.shape[0]) - extra

    @classmethod
    def load(cls, directory: Path) -> SeverityHead:
        card = read_severity_card(directory / CARD_FILE)
        if card.file not in checksummed_files(directory):
            raise PipelineError(f"{directory / card.file} is not listed in {CHECKSUM_FILE}")
        with np.load(directory / card.file, allow_pickle=False) as data:
            return cls(card, np.asarray(data["weights"]), np.asarray(data["bias"]))

    @classmethod
    def for_classifier(
        cls, classifier: str, version: str, models_dir: Path | None
    ) -> SeverityHead | None:
        """The newest head whose card reads this classifier version's features, or None."""
        for head_version in reversed(artefact_versions(MODEL_NAME, models_dir)):
            try:
                directory = artefact_directory(MODEL_NAME, head_version, models_dir)
                card = read_severity_card(directory / CARD_FILE)
            except ModelStoreError as exc:
                log.warning("severity model %s skipped: %s", head_version, exc)
                continue
            if (card.features.model, card.features.version) == (classifier, version):
                return cls.load(directory)
        log.info("no severity model for %s %s: severity is not reported", classifier, version)
        return None

    def inputs(self, features: np.ndarray, model_inputs: Sequence[np.ndarray]) -> np.ndarray:
        """The head's input rows: pooled features (n, d), then the lung statistics."""
        rows = np.asarray(features, np.float32).reshape(len(model_inputs), -1)
        if self.card.features.lung_statistics:
            stats = np.stack([lung_intensity_statistics(m) for m in model_inputs])
            rows = np.concatenate([rows, stats], axis=1)
        return rows

    def given_disease(self, rows: np.ndarray) -> np.ndarray:
        """(n, 2) scores as fitted on COVID-19 radiographs, clipped to the scores' ranges."""
        return np.asarray(np.clip(rows @ self.weights + self.bias, self.minimum, self.maximum))

    def __call__(
        self,
        features: np.ndarray,
        model_inputs: Sequence[np.ndarray],
        probabilities: np.ndarray,
        classes: Sequence[str],
    ) -> list[XraySeverity]:
        """Expected scores and level per image; ``probabilities`` (n, classes) calibrated."""
        scores = self.given_disease(self.inputs(features, model_inputs))
        if self.card.gate_class is not None:
            p_gate = np.asarray(probabilities, np.float32)[
                :, list(classes).index(self.card.gate_class)
            ]
            scores = scores * (1.0 - p_gate)[:, np.newaxis]
        return [
            XraySeverity(
                geographic_extent=float(extent),
                opacity=float(opacity),
                level=severity_level(float(extent), self.thresholds),
            )
            for extent, opacity in scores
        ]


def severity_record(severity: XraySeverity | None) -> dict[str, Any]:
    """The severity keys of the job summary and ``classify --json`` (none without a head)."""
    if severity is None:
        return {}
    return {
        "geographic_extent": round(severity.geographic_extent, 2),
        "opacity": round(severity.opacity, 2),
        "severity_level": severity.level,
        "severity": severity.level_name,
    }

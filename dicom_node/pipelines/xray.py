"""Chest X-ray pipeline: COVID-19 / normal / bacterial pneumonia with a Grad-CAM heatmap.

``preprocess`` decodes each frontal radiograph of the study with the shared preprocessing
(:mod:`dicom_node.preprocessing`, the same code the model was trained with); ``predict`` runs
all of them as one batch through a compiled ``tf.function`` that returns temperature-scaled
probabilities and Grad-CAM maps together; ``postprocess`` resamples each map to the source
image and outlines its hottest region for the SR.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydicom import Dataset

from dicom_node import gradcam
from dicom_node.domain import XRAY_CLASSES, ModelInfo, XrayFinding, XrayImageFinding
from dicom_node.errors import PipelineError, PreprocessingError
from dicom_node.model_store import ModelArtefact, find_artefact, load_keras_model
from dicom_node.pipelines.base import Pipeline
from dicom_node.preprocessing import (
    LoadedImage,
    dataset_to_display,
    display_to_uint8,
    to_model_input,
)

log = logging.getLogger(__name__)

MODEL_NAME = "xray_classifier"
MAX_BATCH = 16  # bounds memory for studies with many images
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})


@dataclass(frozen=True)
class PreparedImage:
    source_sop_instance_uid: str
    display: np.ndarray  # uint8 MONOCHROME2, source Rows x Columns
    model_input: np.ndarray  # (size, size, 1) float32


@dataclass(frozen=True)
class PreparedXray:
    images: tuple[PreparedImage, ...]


class XrayPipeline(Pipeline[PreparedXray, gradcam.CamResult, XrayFinding]):
    name: ClassVar[str] = "xray"

    def __init__(self, artefact: ModelArtefact, model: Any) -> None:
        card = artefact.card
        classes = card.classes
        if classes != XRAY_CLASSES:
            raise PipelineError(
                f"model {artefact.name} {artefact.version} has classes {classes}, "
                f"expected {XRAY_CLASSES}"
            )
        self.artefact = artefact
        self.model_info = ModelInfo(name=artefact.name, version=artefact.version, classes=classes)
        self.input_size = card.input.size
        self._percentiles = card.input.percentiles
        self._margin = card.input.central_margin
        # The label rule fitted on validation (triage operating point): argmax(p_k * w_k).
        self.decision_weights = np.asarray(card.decision.weights, float)
        self.cam = gradcam.GradCam(
            model,
            layer_name=card.gradcam_layer,
            logits_layer=card.logits_layer,
            temperature=card.temperature,
        )

    @classmethod
    def load(cls, models_dir: Path | None = None, version: str | None = None) -> XrayPipeline:
        """The shipped model (newest version unless given), checksum-verified.

        Each call loads the model again: keep the pipeline (``dicom_node.registry`` does).
        """
        artefact = find_artefact(MODEL_NAME, version=version, models_dir=models_dir)
        return cls(artefact, load_keras_model(artefact))

    # -- the pipeline seam ----------------------------------------------------------------

    def warm_up(self) -> None:
        self.cam(np.zeros((1, *self.cam.input_shape), np.float32))

    def model_input(self, display: np.ndarray) -> np.ndarray:
        """Display image (float [0, 1]) -> model input, with the card's parameters."""
        percentiles = (float(self._percentiles[0]), float(self._percentiles[1]))
        return to_model_input(display, self.input_size, percentiles, self._margin)

    def preprocess(self, sources: Sequence[Dataset]) -> PreparedXray:
        prepared, problems = [], []
        for ds in sources:
            uid = str(ds.get("SOPInstanceUID", "?"))
            view = str(ds.get("ViewPosition", "")).upper()
            if view in LATERAL_VIEWS:
                problems.append(f"{uid}: lateral view ({view}) skipped")
                continue
            try:
                display = dataset_to_display(ds)
            except PreprocessingError as exc:
                problems.append(f"{uid}: {exc}")
                continue
            except Exception as exc:  # decoders raise many kinds; name the image and the step
                problems.append(f"{uid}: pixel data cannot be decoded ({type(exc).__name__})")
                continue
            prepared.append(self._prepare(uid, display))
        for problem in problems:
            log.warning("x-ray image not analysed: %s", problem)
        if not prepared:
            detail = "; ".join(problems) or "no images"
            raise PipelineError(f"no frontal radiograph could be analysed ({detail})")
        return PreparedXray(images=tuple(prepared))

    def prepare_images(self, images: Sequence[LoadedImage]) -> PreparedXray:
        """For files already read (``classify``): PNG/JPEG have no SOP Instance UID."""
        return PreparedXray(
            images=tuple(
                self._prepare(
                    str(image.dataset.get("SOPInstanceUID", "")) if image.dataset else "",
                    image.display,
                )
                for image in images
            )
        )

    def _prepare(self, uid: str, display: np.ndarray) -> PreparedImage:
        return PreparedImage(
            source_sop_instance_uid=uid,
            display=display_to_uint8(display),
            model_input=self.model_input(display),
        )

    def predict(self, prepared: PreparedXray) -> gradcam.CamResult:
        batch = np.stack([image.model_input for image in prepared.images])
        parts = [self.cam(batch[i : i + MAX_BATCH]) for i in range(0, len(batch), MAX_BATCH)]
        return gradcam.CamResult(
            probabilities=np.concatenate([p.probabilities for p in parts]),
            cams=np.concatenate([p.cams for p in parts]),
        )

    def postprocess(self, raw: gradcam.CamResult, prepared: PreparedXray) -> XrayFinding:
        findings = []
        for image, probs, cam in zip(prepared.images, raw.probabilities, raw.cams, strict=True):
            rows, cols = image.display.shape
            findings.append(
                XrayImageFinding(
                    source_sop_instance_uid=image.source_sop_instance_uid,
                    label=XRAY_CLASSES[int(np.argmax(probs * self.decision_weights))],
                    probabilities={c: float(p) for c, p in zip(XRAY_CLASSES, probs, strict=True)},
                    heatmap=gradcam.resample(cam, rows, cols),
                    hot_region=gradcam.hot_region(cam, rows, cols),
                    display_image=image.display,
                )
            )
        return XrayFinding(images=tuple(findings))

    def summarise(self, finding: XrayFinding) -> dict[str, Any]:
        """The most confident image's label and probabilities, plus each image's."""
        best = most_confident(finding, self.decision_weights)
        return {
            "label": best.label,
            "probabilities": {k: round(v, 4) for k, v in best.probabilities.items()},
            "images": [
                {
                    "sop_instance_uid": f.source_sop_instance_uid,
                    "label": f.label,
                    "probabilities": {k: round(v, 4) for k, v in f.probabilities.items()},
                }
                for f in finding.images
            ],
        }


def most_confident(finding: XrayFinding, weights: np.ndarray | None = None) -> XrayImageFinding:
    """The study's result: the image with the highest normalised label-rule score p_k * w_k."""
    if not finding.images:
        raise PipelineError("the finding has no images")
    w = np.ones(len(XRAY_CLASSES)) if weights is None else np.asarray(weights, float)

    def confidence(f: XrayImageFinding) -> float:
        scores = np.array([f.probabilities[c] for c in XRAY_CLASSES]) * w
        return float(scores.max() / max(scores.sum(), 1e-12))

    return max(finding.images, key=confidence)

"""Chest X-ray pipeline: COVID-19 / normal / bacterial pneumonia with a Grad-CAM heatmap.

``preprocess`` decodes each frontal radiograph of the study with the shared preprocessing
(:mod:`.preprocessing`, the same code the model was trained with).  For models that look at the lung
fields (cards with ``lung_crop``), the shipped lung segmentation (:mod:`.lung_fields`) runs on all
of them as one batch; an image without two plausible lung fields is *not analysable* (a photograph,
a blank or inverted image, a CT slice), and the others are cropped to their lung fields
(``lung_crop_input``).  ``predict`` runs the inputs as one batch through a compiled ``tf.function``
that returns temperature-scaled probabilities, Grad-CAM maps and the Grad-CAM layer's pooled
features together.  ``postprocess`` refuses images whose features lie far from the training
radiographs (cards with ``ood``), puts each map back into the source image and outlines its hottest
region on the lungs for the SR, and, where a severity head for this classifier is shipped
(:mod:`dicom_node.pipelines.xray.severity`), gives each image its COVID-19 severity scores from the
same features.

A study none of whose images is analysable raises ``NotAnalysable`` (the job is ``ignored``
with the reasons; ``PipelineError``, ``failed``, when one could not be decoded); otherwise the
others are analysed and the refused ones logged and listed in the finding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from pydicom import Dataset

from dicom_node.domain import (
    XRAY_CLASSES,
    Box,
    Heatmap,
    ModelInfo,
    NotAnalysedImage,
    XrayFinding,
    XrayImageFinding,
    XraySeverity,
)
from dicom_node.errors import NotAnalysable, PipelineError, PreprocessingError
from dicom_node.logs import one_line
from dicom_node.pipelines.base import Pipeline
from dicom_node.pipelines.model_card import LungCropSpec, OodSpec
from dicom_node.pipelines.model_store import ModelArtefact, find_artefact, load_keras_model
from dicom_node.pipelines.xray import gradcam, lung_fields
from dicom_node.pipelines.xray.feature_distance import FeatureDistance
from dicom_node.pipelines.xray.lung_fields import LungFields
from dicom_node.pipelines.xray.preprocessing import (
    LoadedImage,
    dataset_to_display,
    display_to_uint8,
    lung_crop_input,
    to_model_input,
)
from dicom_node.pipelines.xray.severity import SeverityHead, severity_record

log = logging.getLogger(__name__)

MODEL_NAME = "xray_classifier"
MAX_BATCH = 16  # bounds memory for studies with many images
INPUT_FUNCTIONS = {
    "dicom_node.pipelines.xray.preprocessing.to_model_input": False,  # the whole image
    "dicom_node.pipelines.xray.preprocessing.lung_crop_input": True,  # the lung fields
    # The same functions as named by cards written before the package layout (models <= 2.0.0).
    "dicom_node.preprocessing.to_model_input": False,
    "dicom_node.preprocessing.lung_crop_input": True,
}
OUTLINE_MAX_SIDE = 256  # the lung outline is traced on the mask at most this size


class Segmenter(Protocol):
    """What the pipeline needs of :class:`dicom_node.pipelines.xray.lung_fields.LungSegmenter`."""

    def warm_up(self) -> None: ...

    def segment(self, displays: Sequence[np.ndarray]) -> list[LungFields]: ...


@dataclass(frozen=True)
class PreparedImage:
    position: int  # index among the images given to preprocess / prepare_images
    source_sop_instance_uid: str
    display: np.ndarray  # uint8 MONOCHROME2, source Rows x Columns
    model_input: np.ndarray  # (size, size, channels) float32, as the model takes it
    lungs: LungFields | None = None  # None: a whole-image model
    crop_box: Box | None = None  # where model_input was cut from; None: the whole image


@dataclass(frozen=True)
class RefusedImage:
    position: int
    source_sop_instance_uid: str
    reason: str
    broken: bool = False  # the pixel data cannot be decoded: a fault, not a kind of image


@dataclass(frozen=True)
class PreparedXray:
    images: tuple[PreparedImage, ...]
    refused: tuple[RefusedImage, ...] = ()


@dataclass(frozen=True)
class _Decoded:
    position: int
    uid: str
    display: np.ndarray  # float32 [0, 1]


def _load_segmenter(spec: LungCropSpec, artefact: ModelArtefact) -> Segmenter:
    if spec.segmentation_model != lung_fields.MODEL_NAME:
        raise PipelineError(
            f"model {artefact.name} {artefact.version} needs lung segmentation "
            f"{spec.segmentation_model!r}; this node has {lung_fields.MODEL_NAME!r}"
        )
    # The segmentation ships beside the classifier (<models>/<name>/<version>/); a classifier
    # elsewhere (a fresh training run) uses the node's models directory's.
    beside = artefact.directory.parent.parent
    models_dir = beside if (beside / spec.segmentation_model).is_dir() else None
    return lung_fields.LungSegmenter.load(models_dir, spec.segmentation_version)


class XrayPipeline(Pipeline[PreparedXray, gradcam.CamResult, XrayFinding]):
    name: ClassVar[str] = "xray"

    def __init__(
        self,
        artefact: ModelArtefact,
        model: Any,
        segmenter: Segmenter | None = None,
        severity: SeverityHead | None = None,
    ) -> None:
        """``segmenter``: the lung segmentation for cards with ``lung_crop`` (None: the one
        shipped beside the artefact); ``severity``: the COVID-19 severity head for this
        classifier's features (None: no severity scores)."""
        card = artefact.card
        classes = card.classes
        if classes != XRAY_CLASSES:
            raise PipelineError(
                f"model {artefact.name} {artefact.version} has classes {classes}, "
                f"expected {XRAY_CLASSES}"
            )
        if INPUT_FUNCTIONS.get(card.input.function) != (card.lung_crop is not None):
            raise PipelineError(
                f"model {artefact.name} {artefact.version}: input function "
                f"{card.input.function!r} does not fit lung_crop {card.lung_crop}"
            )
        self.artefact = artefact
        # The severity head's version is part of the algorithm's (SR Algorithm Version, job
        # log, output UIDs): adding or changing a head changes the results' content.
        version = artefact.version
        if severity is not None:
            version = f"{version}+severity.{severity.card.version}"
        self.model_info = ModelInfo(name=artefact.name, version=version, classes=classes)
        self.input_size = card.input.size
        self._percentiles = (float(card.input.percentiles[0]), float(card.input.percentiles[1]))
        self._margin = card.input.central_margin
        # The label rule fitted on validation (triage operating point): argmax(p_k * w_k).
        self.decision_weights = np.asarray(card.decision.weights, float)
        self.cam = gradcam.GradCam(
            model,
            layer_name=card.gradcam_layer,
            logits_layer=card.logits_layer,
            temperature=card.temperature,
        )
        self.lung_crop = card.lung_crop
        self.segmenter: Segmenter | None = None
        if card.lung_crop is not None:
            self.segmenter = segmenter or _load_segmenter(card.lung_crop, artefact)
        self.ood = self._feature_distance(artefact, card.ood)
        if severity is not None and severity.feature_dimensions != self.cam.feature_channels:
            raise PipelineError(
                f"severity model reads {severity.feature_dimensions} features, layer "
                f"{self.cam.layer_name!r} has {self.cam.feature_channels}"
            )
        self.severity = severity

    def _feature_distance(
        self, artefact: ModelArtefact, spec: OodSpec | None
    ) -> FeatureDistance | None:
        if spec is None:
            return None
        if spec.layer != self.cam.layer_name:
            # The features come from the Grad-CAM pass: one layer, one forward pass.
            raise PipelineError(
                f"ood.layer {spec.layer!r} must be the Grad-CAM layer {self.cam.layer_name!r}"
            )
        distance = FeatureDistance.load(artefact, spec)
        if distance.dimensions != self.cam.feature_channels:
            raise PipelineError(
                f"{spec.file} has {distance.dimensions} features, layer {spec.layer!r} has "
                f"{self.cam.feature_channels}"
            )
        return distance

    @classmethod
    def load(cls, models_dir: Path | None = None, version: str | None = None) -> XrayPipeline:
        """The shipped model (newest version unless given), its lung segmentation and its
        severity head, checksum-verified.

        Each call loads the models again: keep the pipeline (``dicom_node.registry`` does).
        """
        artefact = find_artefact(MODEL_NAME, version=version, models_dir=models_dir)
        severity = SeverityHead.for_classifier(
            artefact.name, artefact.version, artefact.directory.parent.parent
        )
        return cls(artefact, load_keras_model(artefact), severity=severity)

    # -- the pipeline seam ----------------------------------------------------------------

    def warm_up(self) -> None:
        if self.segmenter is not None:
            self.segmenter.warm_up()
        self.cam(np.zeros((1, *self.cam.input_shape), np.float32))

    def model_input(self, display: np.ndarray) -> np.ndarray:
        """Display image (float [0, 1]) -> whole-image model input, with the card's parameters."""
        return to_model_input(display, self.input_size, self._percentiles, self._margin)

    def preprocess(self, sources: Sequence[Dataset]) -> PreparedXray:
        decoded, refused = [], []
        for position, ds in enumerate(sources):
            uid = str(ds.get("SOPInstanceUID", "?"))
            display = _decode(ds)
            if isinstance(display, str):
                refused.append(RefusedImage(position, uid, display, broken=True))
            else:
                decoded.append(_Decoded(position, uid, display))
        prepared = self._prepare(decoded, refused)
        if not prepared.images:
            raise _nothing_analysable(prepared.refused)
        return prepared

    def prepare_images(self, images: Sequence[LoadedImage]) -> PreparedXray:
        """For files already read (``classify``); never raises for an unanalysable image (they
        are in ``refused``).  PNG/JPEG have no SOP Instance UID."""
        decoded = [
            _Decoded(position, _sop_uid(image.dataset), image.display)
            for position, image in enumerate(images)
        ]
        return self._prepare(decoded, [])

    def _prepare(self, decoded: list[_Decoded], refused: list[RefusedImage]) -> PreparedXray:
        if self.segmenter is None:
            images = [self._whole_image(d) for d in decoded]
        else:
            # One batch through the segmentation for the whole study.
            fields = self.segmenter.segment([d.display for d in decoded]) if decoded else []
            images = []
            for image, lungs in zip(decoded, fields, strict=True):
                prepared = self._lung_crop(image, lungs)
                if isinstance(prepared, RefusedImage):
                    refused.append(prepared)
                else:
                    images.append(prepared)
        refused.sort(key=lambda r: r.position)
        return PreparedXray(images=tuple(images), refused=tuple(refused))

    def _whole_image(self, image: _Decoded) -> PreparedImage:
        return PreparedImage(
            position=image.position,
            source_sop_instance_uid=image.uid,
            display=display_to_uint8(image.display),
            model_input=self.model_input(image.display),
        )

    def _lung_crop(self, image: _Decoded, lungs: LungFields) -> PreparedImage | RefusedImage:
        spec = self.lung_crop
        assert spec is not None
        if lungs.problem is not None:
            return RefusedImage(image.position, image.uid, lungs.problem)
        try:
            crop = lung_crop_input(
                image.display,
                lungs.mask,
                self.input_size,
                self._percentiles,
                spec.margin,
                spec.fade,
            )
        except PreprocessingError as exc:
            return RefusedImage(image.position, image.uid, one_line(str(exc), squeeze=True))
        return PreparedImage(
            position=image.position,
            source_sop_instance_uid=image.uid,
            display=display_to_uint8(image.display),
            model_input=crop.model_input,
            lungs=lungs,
            crop_box=crop.box,
        )

    def predict(self, prepared: PreparedXray) -> gradcam.CamResult:
        if not prepared.images:
            return gradcam.CamResult.empty(len(XRAY_CLASSES))
        batch = np.stack([image.model_input for image in prepared.images])
        parts = [self.cam(batch[i : i + MAX_BATCH]) for i in range(0, len(batch), MAX_BATCH)]
        return gradcam.CamResult.concatenate(parts)

    def postprocess(self, raw: gradcam.CamResult, prepared: PreparedXray) -> XrayFinding:
        outcomes = self.conclude(raw, prepared)
        analysed = [o for o in outcomes if isinstance(o, XrayImageFinding)]
        refused = [o for o in outcomes if isinstance(o, RefusedImage)]
        for image in refused:
            log.warning(
                "x-ray image not analysed: %s: %s", image.source_sop_instance_uid, image.reason
            )
        if not analysed:
            raise _nothing_analysable(refused)
        return XrayFinding(
            images=tuple(analysed),
            not_analysed=tuple(
                NotAnalysedImage(r.source_sop_instance_uid, r.reason) for r in refused
            ),
        )

    def conclude(
        self, raw: gradcam.CamResult, prepared: PreparedXray
    ) -> list[XrayImageFinding | RefusedImage]:
        """Each input's outcome, in input order: a finding, or why it was not analysed."""
        outcomes: dict[int, XrayImageFinding | RefusedImage] = {
            r.position: r for r in prepared.refused
        }
        analysed = []
        for index, image in enumerate(prepared.images):
            reason = self._ood_reason(raw.features[index])
            if reason is not None:
                outcomes[image.position] = RefusedImage(
                    image.position, image.source_sop_instance_uid, reason
                )
            else:
                analysed.append(index)
        severities = self._severities(raw, prepared, analysed)
        for index, severity in zip(analysed, severities, strict=True):
            image = prepared.images[index]
            outcomes[image.position] = self._finding(
                image, raw.probabilities[index], raw.cams[index], severity
            )
        return [outcomes[position] for position in sorted(outcomes)]

    def _severities(
        self, raw: gradcam.CamResult, prepared: PreparedXray, analysed: list[int]
    ) -> list[XraySeverity | None]:
        if self.severity is None or not analysed:
            return [None] * len(analysed)
        return list(
            self.severity(
                raw.features[analysed],
                [prepared.images[i].model_input for i in analysed],
                raw.probabilities[analysed],
                XRAY_CLASSES,
            )
        )

    def _ood_reason(self, features: np.ndarray) -> str | None:
        if self.ood is None:
            return None
        return self.ood.reason(float(self.ood(features[np.newaxis])[0]))

    def analyse_images(
        self, images: Sequence[LoadedImage]
    ) -> list[XrayImageFinding | RefusedImage]:
        """Files already read (``classify``): one outcome per image, in order; never raises
        for an image that is not analysable."""
        prepared = self.prepare_images(images)
        return self.conclude(self.predict(prepared), prepared)

    def _finding(
        self,
        image: PreparedImage,
        probs: np.ndarray,
        cam: np.ndarray,
        severity: XraySeverity | None = None,
    ) -> XrayImageFinding:
        shape = (int(image.display.shape[0]), int(image.display.shape[1]))
        label_index = int(np.argmax(probs * self.decision_weights))
        heatmap = gradcam.resample_into(cam, shape, image.crop_box)
        lungs = image.lungs
        mask = lungs.mask if lungs is not None else None
        return XrayImageFinding(
            source_sop_instance_uid=image.source_sop_instance_uid,
            label=XRAY_CLASSES[label_index],
            probabilities={c: float(p) for c, p in zip(XRAY_CLASSES, probs, strict=True)},
            heatmap=heatmap,
            hot_region=gradcam.hot_region(cam, *shape, box=image.crop_box, mask=mask),
            display_image=image.display,
            lung_mask=mask,
            lung_outline=lung_outline(mask) if mask is not None else (),
            lung_box=lungs.box if lungs is not None else None,
            crop_box=image.crop_box,
            heat_in_lungs=gradcam.mass_inside(heatmap, mask) if mask is not None else None,
            # The triage weights can pick a class that is not the most probable one.
            triage_suspicion=label_index != int(np.argmax(probs)),
            severity=severity,
        )

    def summarise(self, finding: XrayFinding) -> dict[str, Any]:
        """The most confident image's label and probabilities, plus each image's."""
        best = most_confident(finding, self.decision_weights)
        return {
            "label": best.label,
            "probabilities": {k: round(v, 4) for k, v in best.probabilities.items()},
            "triage_suspicion": best.triage_suspicion,
            **severity_record(best.severity),
            "images": _image_summaries(finding),
        }

    def describe(self, finding: XrayFinding) -> dict[str, Any]:
        """The most confident image's record (``classify``) and each image's summary."""
        best = most_confident(finding, self.decision_weights)
        lung_box = best.lung_box
        return {
            "label": best.label,
            "probabilities": {k: round(float(v), 4) for k, v in best.probabilities.items()},
            "triage_suspicion": bool(best.triage_suspicion),
            "region": [[round(float(x), 1), round(float(y), 1)] for x, y in best.hot_region],
            # (row0, row1, col0, col1) -> [x0, y0, x1, y1], as image tools expect boxes.
            "lung_box": None
            if lung_box is None
            else [lung_box[2], lung_box[0], lung_box[3], lung_box[1]],
            "heat_in_lungs": None if best.heat_in_lungs is None else round(best.heat_in_lungs, 4),
            **severity_record(best.severity),
            "images": _image_summaries(finding),
        }

    def heatmaps(self, finding: XrayFinding) -> Sequence[Heatmap]:
        return (most_confident(finding, self.decision_weights),)

    def run_each(self, images: Sequence[LoadedImage]) -> list[XrayFinding | str]:
        """One batch for all the files; each radiograph is its own one-image finding."""
        return [
            XrayFinding(images=(outcome,))
            if isinstance(outcome, XrayImageFinding)
            else outcome.reason
            for outcome in self.analyse_images(images)
        ]


def _image_summaries(finding: XrayFinding) -> list[dict[str, Any]]:
    """Each image's label, probabilities and severity; each refused image's reason."""
    analysed = [
        {
            "sop_instance_uid": f.source_sop_instance_uid,
            "label": f.label,
            "probabilities": {k: round(v, 4) for k, v in f.probabilities.items()},
            "triage_suspicion": f.triage_suspicion,
            **severity_record(f.severity),
            **({"heat_in_lungs": round(f.heat_in_lungs, 4)} if f.heat_in_lungs is not None else {}),
        }
        for f in finding.images
    ]
    refused = [
        {"sop_instance_uid": n.source_sop_instance_uid, "not_analysable": n.reason}
        for n in finding.not_analysed
    ]
    return analysed + refused


def _sop_uid(dataset: Dataset | None) -> str:
    return str(dataset.get("SOPInstanceUID", "")) if dataset else ""


def _decode(ds: Dataset) -> np.ndarray | str:
    """The display image, or why there is none."""
    try:
        return dataset_to_display(ds)
    except PreprocessingError as exc:
        return one_line(str(exc), squeeze=True)
    except Exception as exc:  # decoders raise many kinds; name the step
        return f"pixel data cannot be decoded ({type(exc).__name__})"


def _nothing_analysable(refused: Sequence[RefusedImage]) -> PipelineError:
    """The study's error: ``NotAnalysable`` (job ``ignored``: no image this model reads), or,
    when an image could not even be decoded, ``PipelineError`` (``failed``: someone should
    look at the broken data)."""
    detail = "; ".join(f"{r.source_sop_instance_uid}: {r.reason}" for r in refused)
    message = f"no frontal radiograph could be analysed ({detail or 'no images'})"
    if any(r.broken for r in refused):
        return PipelineError(message)
    return NotAnalysable(message)


def lung_outline(mask: np.ndarray, max_side: int = OUTLINE_MAX_SIDE) -> tuple[np.ndarray, ...]:
    """Closed (column, row) polygons around the mask's regions, in source pixels.

    Traced on the mask reduced to at most ``max_side`` (full detector resolution costs a
    fifth of a second and adds nothing at display size), largest first.
    """
    from skimage.measure import approximate_polygon, find_contours

    rows, cols = mask.shape
    step = max(1, -(-max(rows, cols) // max_side))  # ceil: at most max_side after striding
    small = mask[::step, ::step]  # striding: a box filter costs more and shows no difference
    padded = np.pad(small.astype(np.float32), 1)
    contours = find_contours(padded, 0.5)  # type: ignore[no-untyped-call,unused-ignore]
    polygons = []
    for contour in sorted(contours, key=len, reverse=True):
        if len(contour) < 8:  # specks left by the reduction
            continue
        simple = approximate_polygon(contour - 1.0, tolerance=0.5)  # type: ignore[no-untyped-call,unused-ignore]
        rc = np.clip(simple * step, 0, [rows - 1, cols - 1])  # sample i is source pixel i*step
        points = np.asarray(rc[:, ::-1], np.float32)
        if not np.array_equal(points[0], points[-1]):
            points = np.vstack([points, points[:1]])
        polygons.append(points)
    return tuple(polygons)


def most_confident(finding: XrayFinding, weights: np.ndarray | None = None) -> XrayImageFinding:
    """The study's result: the image with the highest normalised label-rule score p_k * w_k."""
    if not finding.images:
        raise PipelineError("the finding has no images")
    w = np.ones(len(XRAY_CLASSES)) if weights is None else np.asarray(weights, float)

    def confidence(f: XrayImageFinding) -> float:
        scores = np.array([f.probabilities[c] for c in XRAY_CLASSES]) * w
        return float(scores.max() / max(scores.sum(), 1e-12))

    return max(finding.images, key=confidence)

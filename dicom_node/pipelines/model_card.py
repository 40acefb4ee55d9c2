"""The model card, typed: what a model artefact says about itself (``model_card.json``).

``training`` builds and writes a :class:`ModelCard`; the node reads it back with
:meth:`ModelCard.from_json` (``model_store.find_artefact``) and uses the inference parameters:
classes, input size and normalisation, temperature, label rule, Grad-CAM and logits layers.

This module is the one place for the card's defaults: the dataclass defaults below.  A field
without a default that a card lacks (``classes``, ``input.size``; inside a documenting section
that is present, each of its fields) is a :class:`ModelStoreError` naming it, and so is a value
of the wrong type.  The sections that only document the model (title, training, data,
metrics, ...) may be absent (``None``); ``to_json`` leaves out every absent optional field, so
``ModelCard.from_json(j).to_json() == j`` for a card that spells its inference fields out (as
every card ``training`` writes does).  Keys the card does not define are ignored: among them
``ct``, the CT section of the cards of the removed CT slice classifier.

Open-ended tables (metrics, augmentation, evaluation results) stay ``Mapping[str, Any]``.
This module imports nothing of ours but ``dicom_node.errors``.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union, cast, get_args, get_origin, get_type_hints

from dicom_node.errors import ModelStoreError

__all__ = [
    "ARGMAX_RULE",
    "Architecture",
    "DataInfo",
    "DecisionRule",
    "EnsembleInfo",
    "EnsembleMember",
    "ExtraEvaluation",
    "InputSpec",
    "LungCropSpec",
    "ModelCard",
    "OodSpec",
    "OperatingPoint",
    "SeverityCard",
    "SeverityFeatures",
    "SeverityLevels",
    "SeverityScore",
    "Target",
    "TrainingInfo",
]

ARGMAX_RULE = "label = argmax(p)"


def _key(json_name: str) -> dict[str, str]:
    """Field metadata: the field's JSON key where it differs from the attribute name."""
    return {"json": json_name}


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """How an image becomes the model input (``pipelines.xray.preprocessing.to_model_input``)."""

    size: int  # square side in pixels
    channels: int = 1
    value_range: tuple[float, float] = field(default=(0.0, 1.0), metadata=_key("range"))
    percentiles: tuple[float, float] = (1.0, 99.0)  # the contrast stretch
    central_margin: float = 0.1  # the stretch's percentiles come from the centre without it
    function: str = "dicom_node.pipelines.xray.preprocessing.to_model_input"
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class LungCropSpec:
    """X-ray models that see the lung fields (``pipelines.xray.preprocessing.lung_crop_input``)."""

    segmentation_model: str = "lung_segmentation"  # the artefact that finds the lung fields
    segmentation_version: str | None = None  # None: the newest shipped version
    margin: float = 0.08  # the lung box grows by this fraction on each side
    fade: tuple[float, float] | None = (0.03, 0.08)  # black from this far off the lungs


@dataclass(frozen=True, kw_only=True)
class OodSpec:
    """Out-of-distribution check: distance of an image's pooled features to the training set.

    ``file`` (in the artefact, checksummed) holds ``mean`` (d,), ``components`` (d, k) and
    ``scale`` (k,): the distance is the norm of ``((features - mean) @ components) / scale``
    (a Mahalanobis distance in the training features' principal subspace).
    """

    file: str = "ood.npz"
    layer: str  # the feature map that is average-pooled into the features
    threshold: float  # distances above it are "not analysable"
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class OperatingPoint:
    """The validation sensitivity the label rule was fitted to reach for one class."""

    class_name: str = field(metadata=_key("class"))
    sensitivity: float


@dataclass(frozen=True, kw_only=True)
class DecisionRule:
    """The label rule ``argmax(p_k * weight_k)`` over the calibrated probabilities."""

    rule: str = ARGMAX_RULE
    weights: tuple[float, ...]  # one per class; a card without them gets all 1.0 (argmax)
    fitted_on: str | None = None
    target: OperatingPoint | None = None

    @classmethod
    def argmax(cls, n_classes: int) -> DecisionRule:
        return cls(weights=(1.0,) * n_classes)


@dataclass(frozen=True, kw_only=True)
class Architecture:
    backbone: str
    head: str
    parameters: int
    weights_provenance: str
    description: str


@dataclass(frozen=True, kw_only=True)
class EnsembleMember:
    seed: int
    epochs_run: int
    best_epoch: int
    val_macro_auc: float | None


@dataclass(frozen=True, kw_only=True)
class EnsembleInfo:
    members: int
    rule: str
    seeds: tuple[EnsembleMember, ...]


@dataclass(frozen=True, kw_only=True)
class TrainingInfo:
    command: str
    seed: int
    epochs_max: int
    epochs_run: int
    best_epoch: int
    early_stopping: str
    batch_size: int
    optimizer: str
    learning_rate: float
    learning_rate_schedule: str = "constant"
    weight_decay: float
    class_weighting: str
    source_balance: float
    limit_per_class: int | None
    augmentation: Mapping[str, Any]
    duration_s: float
    machine: str
    history: Mapping[str, tuple[float | None, ...]]  # per epoch; None where not finite
    ensemble: EnsembleInfo | None = None


@dataclass(frozen=True, kw_only=True)
class DataInfo:
    data_dir: str
    manifest_sha256: str
    split_counts: Mapping[str, Mapping[str, int]]
    used_per_split: Mapping[str, Mapping[str, int]]
    train_sources: Mapping[str, int]


@dataclass(frozen=True, kw_only=True)
class ExtraEvaluation:
    description: str
    results: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class Target:
    """One quality target on an evaluated split, with the value reached."""

    split: str
    metric: str  # a path in the split's metrics, such as "per_class.covid.sensitivity"
    minimum: float
    value: float | None
    met: bool


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """``model_card.json``; fields in the order they are written."""

    name: str | None = None
    version: str | None = None
    title: str | None = None
    created: str | None = None  # ISO 8601, UTC
    research_use_only: bool | None = None
    classes: tuple[str, ...]  # the model's output order
    input: InputSpec
    logits_layer: str = "logits"
    temperature: float = 1.0  # fitted on validation; probabilities = softmax(logits / T)
    decision: DecisionRule  # from_json: argmax over ``classes`` when the card has none
    gradcam_layer: str | None = None  # None: Grad-CAM picks the last convolution
    architecture: Architecture | None = None
    training: TrainingInfo | None = None
    data: DataInfo | None = None
    versions: Mapping[str, str] | None = None
    metrics: Mapping[str, Mapping[str, Any]] | None = None  # per evaluated split
    extra_evaluations: Mapping[str, ExtraEvaluation] | None = None
    intended_use: str | None = None
    limitations: tuple[str, ...] | None = None
    targets: tuple[Target, ...] | None = None
    plots: tuple[str, ...] | None = None
    lung_crop: LungCropSpec | None = None  # X-ray models that see the lung fields only
    ood: OodSpec | None = None  # models with a feature-space out-of-distribution check

    def __post_init__(self) -> None:
        if len(self.decision.weights) != len(self.classes):
            raise ModelStoreError(
                f"model card: decision.weights has {len(self.decision.weights)} values for "
                f"{len(self.classes)} classes"
            )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelCard:
        """The card from parsed ``model_card.json``; ModelStoreError names a bad field."""
        if not isinstance(data, Mapping):
            raise ModelStoreError(f"model card must be a JSON object, got {type(data).__name__}")
        classes, decision = data.get("classes"), data.get("decision", {})
        if isinstance(classes, list | tuple) and isinstance(decision, Mapping):
            # The one default that depends on another field: argmax over the card's classes.
            data = {**data, "decision": {"weights": [1.0] * len(classes), **decision}}
        return cast(ModelCard, _parse_dataclass(cls, data, ""))

    def to_json(self) -> dict[str, Any]:
        """The card as JSON-ready dicts and lists (absent optional fields left out)."""
        return cast(dict[str, Any], _dump(self))


# -- the X-ray severity head (``models/xray_severity/<version>/``) -------------------------------


@dataclass(frozen=True, kw_only=True)
class SeverityFeatures:
    """What the severity head reads: a classifier's pooled features, plus lung statistics."""

    model: str  # the classifier artefact whose features these are
    version: str  # exactly this version: other weights give other features
    layer: str  # the pooled feature map (the classifier's Grad-CAM layer)
    lung_statistics: bool = True  # ``xray_severity.lung_intensity_statistics`` appended


@dataclass(frozen=True, kw_only=True)
class SeverityScore:
    name: str  # "geographic_extent", "opacity"
    minimum: float
    maximum: float
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class SeverityLevels:
    """Level k (1, 2, 3) from ``thresholds[k-1]`` of ``score`` up; level 0 below the first."""

    score: str = "geographic_extent"
    thresholds: tuple[float, float, float]
    names: tuple[str, str, str, str] = ("none or minimal", "mild", "moderate", "severe")
    rationale: str = ""


@dataclass(frozen=True, kw_only=True)
class SeverityCard:
    """``model_card.json`` of a severity head: a linear map from features to scores.

    ``file`` (checksummed) holds ``weights`` (d, k) and ``bias`` (k,), one column per score:
    the scores given disease are ``features @ weights + bias``, clipped to each score's range;
    the reported (expected) scores are those times ``1 - p(gate_class)`` of the classifier.
    """

    name: str | None = None
    version: str | None = None
    title: str | None = None
    created: str | None = None
    research_use_only: bool | None = None
    scores: tuple[SeverityScore, ...]
    features: SeverityFeatures
    file: str = "severity.npz"
    gate_class: str | None = "normal"  # None: the scores given disease are reported as they are
    levels: SeverityLevels
    architecture: Architecture | None = None
    training: Mapping[str, Any] | None = None
    data: Mapping[str, Any] | None = None
    versions: Mapping[str, str] | None = None
    metrics: Mapping[str, Any] | None = None
    intended_use: str | None = None
    limitations: tuple[str, ...] | None = None
    targets: tuple[Target, ...] | None = None
    plots: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SeverityCard:
        return cast(SeverityCard, _parse_dataclass(cls, data, ""))

    def to_json(self) -> dict[str, Any]:
        return cast(dict[str, Any], _dump(self))


# -- JSON <-> dataclasses, driven by the field types above -----------------------------------


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _json_name(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("json", f.name))


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _bad(where: str, expected: str, value: Any) -> ModelStoreError:
    return ModelStoreError(f"model card: {where} must be {expected}, got {value!r:.60}")


def _parse_dataclass(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, Mapping):
        raise _bad(where or "the card", "an object", value)
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = _json_name(f)
        path = f"{where}.{key}" if where else key
        if key in value:
            kwargs[f.name] = _parse(hints[f.name], value[key], path)
        elif not _has_default(f):
            raise ModelStoreError(f"model card: required field {path!r} is missing")
    return cls(**kwargs)


def _parse(tp: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as type ``tp``; ModelStoreError naming ``where`` if it is not."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return None if value is None else _parse(inner, value, where)
    if dataclasses.is_dataclass(tp):
        return _parse_dataclass(cast(type, tp), value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad(where, "true or false", value)
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad(where, "an integer", value)
        return value
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _bad(where, "a number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _bad(where, "a string", value)
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list | tuple):
            raise _bad(where, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif len(value) != len(args):
            raise _bad(where, f"a list of {len(args)}", value)
        return tuple(
            _parse(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is Mapping:
        _, inner = get_args(tp)
        if not isinstance(value, Mapping):
            raise _bad(where, "an object", value)
        return {str(k): _parse(inner, v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"model card: no JSON conversion for {tp!r} ({where})")  # a bug here


def _dump(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            _json_name(f): _dump(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not (getattr(value, f.name) is None and f.default is None)
        }
    if isinstance(value, Mapping):
        return {k: _dump(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    return value

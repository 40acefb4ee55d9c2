"""Which pipeline handles a study: THE rule table (modality, SOP class, body part, image type,
view), checked once.

Every header rule about what the node analyses lives here and nowhere else:

- intake accepts the SOP classes of the table (:func:`accepted_sop_classes`; the SCP offers
  exactly these presentation contexts, STOW-RS takes exactly these);
- assembly routes each complete study with :func:`route` on the job log's instance rows;
- ``dicom-node classify`` routes DICOM files with the same function on :func:`header_info`;
- the pipelines receive only the instances a rule took and do not repeat these checks (they
  refuse what only pixels or geometry can tell: no lung fields, a gap in a series).

A study is routed to the rule that takes the most instances; the pipeline receives only those
(a chest CT study's scout, a lateral view or a stray SC stays out).  When nothing matches, the
decision carries the reason shown in the job log as ``ignored``, the same words everywhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydicom import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)

# BodyPartExamined values (PS3.16 CID 4031 and common vendor spellings) that mean chest.
CHEST_BODY_PARTS = frozenset(
    {"CHEST", "THORAX", "LUNG", "CHESTABDOMEN", "CHEST_ABDOMEN", "CHESTABDPELVIS", "TORSO"}
)
# Used only when BodyPartExamined is absent: words in study/series/protocol descriptions.
CHEST_KEYWORDS = ("CHEST", "THORAX", "THORAC", "LUNG", "TORAX", "PULMO")
# Scout images of a CT (ImageType value 3 in practice; vendors spell it three ways).
LOCALIZER_IMAGE_TYPES = frozenset({"LOCALIZER", "SCOUT", "TOPOGRAM"})
# ViewPosition (PS3.3 C.8.11.5) of lateral and decubitus radiographs: the classifier reads
# frontal (PA/AP) films only.
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})


class InstanceInfo(Protocol):
    """What routing reads of an instance (``joblog.records.StoredInstance`` has it)."""

    @property
    def modality(self) -> str | None: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def body_part(self) -> str | None: ...
    @property
    def image_type(self) -> str | None: ...
    @property
    def view_position(self) -> str | None: ...
    @property
    def description(self) -> str | None: ...


@dataclass(frozen=True)
class HeaderInfo:
    """The routing fields of one data set, bounded and printable (the job log stores them)."""

    modality: str | None
    sop_class_uid: str
    body_part: str | None
    image_type: str | None
    view_position: str | None
    description: str | None


def header_info(header: Dataset) -> HeaderInfo:
    """Routing fields from a header; never raises (a broken value reads as missing)."""
    return HeaderInfo(
        modality=_text(header, "Modality", 16),
        sop_class_uid=_text(header, "SOPClassUID", 64) or "",
        body_part=_text(header, "BodyPartExamined", 64),
        image_type=_image_type(header),
        view_position=_text(header, "ViewPosition", 16),
        description=_descriptions(header),
    )


@dataclass(frozen=True)
class RoutingRule:
    pipeline: str
    modalities: frozenset[str]
    sop_classes: frozenset[str]
    excluded_image_types: frozenset[str] = frozenset()
    excluded_views: frozenset[str] = frozenset()
    chest_only: bool = True

    def rejects(self, instance: InstanceInfo) -> str | None:
        """Why this rule does not take ``instance`` (None: it does)."""
        if (instance.modality or "").upper() not in self.modalities:
            wanted = "/".join(sorted(self.modalities))
            return f"modality {instance.modality or 'missing'} is not {wanted}"
        if instance.sop_class_uid not in self.sop_classes:
            return (
                f"SOP class {instance.sop_class_uid} is not handled by the {self.pipeline} pipeline"
            )
        image_type = {v.strip().upper() for v in (instance.image_type or "").split("\\")}
        excluded = image_type & self.excluded_image_types
        if excluded:
            return f"image type {'/'.join(sorted(excluded))} is not analysed"
        view = (instance.view_position or "").strip().upper()
        if view in self.excluded_views:
            return f"lateral or decubitus view ({view}) is not analysed"
        if self.chest_only and not is_chest(instance):
            part = instance.body_part or "missing"
            return f"body part {part} is not chest"
        return None


@dataclass(frozen=True)
class RouteDecision:
    pipeline: str | None
    instance_indexes: tuple[int, ...]
    reason: str


DEFAULT_RULES: tuple[RoutingRule, ...] = (
    RoutingRule(
        pipeline="xray",
        modalities=frozenset({"CR", "DX"}),
        sop_classes=frozenset(
            {
                ComputedRadiographyImageStorage,
                DigitalXRayImageStorageForPresentation,
                DigitalXRayImageStorageForProcessing,
            }
        ),
        excluded_views=LATERAL_VIEWS,
    ),
    RoutingRule(
        pipeline="ct",
        modalities=frozenset({"CT"}),
        # Single-frame CT only: the CT pipeline stacks slices (no Enhanced CT multi-frame).
        sop_classes=frozenset({CTImageStorage}),
        excluded_image_types=LOCALIZER_IMAGE_TYPES,
    ),
)


def accepted_sop_classes(rules: Iterable[RoutingRule] = DEFAULT_RULES) -> tuple[str, ...]:
    """The storage SOP classes intake accepts: those some rule can analyse, in table order."""
    seen: dict[str, None] = {}
    for rule in rules:
        seen.update(dict.fromkeys(sorted(rule.sop_classes)))
    return tuple(seen)


def is_chest(instance: InstanceInfo) -> bool:
    part = (instance.body_part or "").strip().upper().replace(" ", "")
    if part:
        return part in CHEST_BODY_PARTS
    text = (instance.description or "").upper()
    return any(word in text for word in CHEST_KEYWORDS)


def route(
    instances: Sequence[InstanceInfo], rules: Sequence[RoutingRule] = DEFAULT_RULES
) -> RouteDecision:
    best: RouteDecision | None = None
    reasons: Counter[str] = Counter()
    for rule in rules:
        taken = []
        for index, instance in enumerate(instances):
            why_not = rule.rejects(instance)
            if why_not is None:
                taken.append(index)
            elif (instance.modality or "").upper() in rule.modalities:
                reasons[why_not] += 1
        if taken and (best is None or len(taken) > len(best.instance_indexes)):
            best = RouteDecision(rule.pipeline, tuple(taken), f"{len(taken)} instance(s)")
    if best is not None:
        return best
    if not reasons:
        modalities = sorted({(i.modality or "missing") for i in instances})
        return RouteDecision(None, (), f"no pipeline for modality {'/'.join(modalities)}")
    reason, count = reasons.most_common(1)[0]
    return RouteDecision(None, (), f"{reason} ({count} instance(s))")


def _text(header: Dataset, keyword: str, limit: int) -> str | None:
    try:
        value = header.get(keyword)
    except Exception:
        return None
    text = "".join(ch for ch in str(value) if ch.isprintable()).strip() if value else ""
    return text[:limit] or None


def _image_type(header: Dataset) -> str | None:
    try:
        values = header.get("ImageType", []) or []
        items = [values] if isinstance(values, str) else list(values)  # CS, VM 2-n
        joined = "\\".join(str(v) for v in items)
    except Exception:
        return None
    return "".join(ch for ch in joined if ch.isprintable())[:128] or None


def _descriptions(header: Dataset) -> str | None:
    """Study/series/protocol descriptions, used when Body Part is absent."""
    parts = [
        _text(header, k, 256) for k in ("StudyDescription", "SeriesDescription", "ProtocolName")
    ]
    joined = " | ".join(p for p in parts if p)
    return joined[:256] or None

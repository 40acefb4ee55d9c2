"""Which pipeline handles a study: data-driven rules on modality, SOP class, body part, image type.

A study is routed to the rule that selects the most instances; the pipeline receives only
those instances (a chest CT study's scout or a stray SC stays out).  When nothing matches,
the decision carries the reason shown in the job log as ``ignored``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedCTImageStorage,
)

# BodyPartExamined values (PS3.16 CID 4031 and common vendor spellings) that mean chest.
CHEST_BODY_PARTS = frozenset(
    {"CHEST", "THORAX", "LUNG", "CHESTABDOMEN", "CHEST_ABDOMEN", "CHESTABDPELVIS", "TORSO"}
)
# Used only when BodyPartExamined is absent: words in study/series/protocol descriptions.
CHEST_KEYWORDS = ("CHEST", "THORAX", "THORAC", "LUNG", "TORAX", "PULMO")


class InstanceInfo(Protocol):
    """What routing reads of a stored instance (``joblog.records.StoredInstance`` has it)."""

    @property
    def modality(self) -> str | None: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def body_part(self) -> str | None: ...
    @property
    def image_type(self) -> str | None: ...
    @property
    def description(self) -> str | None: ...


@dataclass(frozen=True)
class RoutingRule:
    pipeline: str
    modalities: frozenset[str]
    sop_classes: frozenset[str]
    excluded_image_types: frozenset[str] = frozenset()
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
    ),
    RoutingRule(
        pipeline="ct",
        modalities=frozenset({"CT"}),
        sop_classes=frozenset({CTImageStorage, EnhancedCTImageStorage}),
        excluded_image_types=frozenset({"LOCALIZER"}),
    ),
)


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

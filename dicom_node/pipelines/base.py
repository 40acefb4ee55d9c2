"""The pipeline seam shared by the X-ray and CT pipelines.

A pipeline is ``preprocess -> predict -> postprocess`` on the decoded source datasets of one
study; the finding it returns (:mod:`dicom_node.domain`) is turned into DICOM objects by the
output builder the registry pairs it with (:mod:`dicom_node.registry`).  Pipelines never import
outputs.  The worker only talks to this interface, so a new pipeline plugs in without touching it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from pydicom import Dataset

from dicom_node.domain import ModelInfo

PreparedT = TypeVar("PreparedT")
RawT = TypeVar("RawT")
FindingT = TypeVar("FindingT")


class Pipeline(ABC, Generic[PreparedT, RawT, FindingT]):
    """Base class: subclasses load their model once in ``__init__`` and keep it."""

    name: ClassVar[str]
    model_info: ModelInfo

    @abstractmethod
    def preprocess(self, sources: Sequence[Dataset]) -> PreparedT:
        """Decode pixels and build model inputs; raise ``PipelineError`` for unusable input."""

    @abstractmethod
    def predict(self, prepared: PreparedT) -> RawT:
        """Run the model(s)."""

    @abstractmethod
    def postprocess(self, raw: RawT, prepared: PreparedT) -> FindingT:
        """Turn model outputs into a finding expressed in source-image geometry."""

    def summarise(self, finding: FindingT) -> dict[str, Any]:
        """A small JSON-able summary (label, probabilities, volumes): job log and ``classify``."""
        return {}

    def warm_up(self) -> None:
        """Trace compiled functions once at start, so the first study does not pay for it."""

    def run(self, sources: Sequence[Dataset]) -> FindingT:
        prepared = self.preprocess(sources)
        return self.postprocess(self.predict(prepared), prepared)

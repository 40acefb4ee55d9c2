"""The pipeline seam shared by the X-ray and CT pipelines.

A pipeline is ``preprocess -> predict -> postprocess`` on the decoded source datasets of one
study; the finding it returns (:mod:`dicom_node.domain`) is turned into DICOM objects by the
output builder the registry pairs it with (:mod:`dicom_node.registry`, typed so that mypy checks
the builder takes the pipeline's finding).  Pipelines never import outputs.  The worker and
``dicom-node classify`` only talk to this interface, so a new pipeline plugs in without touching
either:

- the worker: ``run`` -> the output builder, ``summarise`` -> the job log;
- ``classify``: ``run`` (a directory) or ``run_each`` (single image files) -> ``describe``,
  and ``heatmaps`` for ``--heatmap-dir``.

The instances a pipeline receives were chosen by the routing table (:mod:`dicom_node.routing`):
pipelines do not check modality, SOP class, body part, image type or view again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydicom import Dataset

from dicom_node.domain import Heatmap, ModelInfo

if TYPE_CHECKING:
    from dicom_node.pixels import LoadedImage

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
        """A small JSON-able summary (label, probabilities, volumes) for the job log."""
        return {}

    def describe(self, finding: FindingT) -> dict[str, Any]:
        """``classify``'s record of a finding (JSON-able; ``label`` first); the summary unless
        a pipeline has more to say."""
        return self.summarise(finding)

    def heatmaps(self, finding: FindingT) -> Sequence[Heatmap]:
        """Pictures ``classify --heatmap-dir`` draws (the study's most telling first)."""
        return ()

    def run_each(self, images: Sequence[LoadedImage]) -> list[FindingT | str]:
        """Single image files (``classify``), each its own study: a finding or the reason it is
        not analysable, in order; never raises for one image the model cannot read."""
        reason = f"a single image: the {self.name} pipeline analyses a series (give a directory)"
        return [reason for _ in images]

    def warm_up(self) -> None:
        """Trace compiled functions once at start, so the first study does not pay for it."""

    def run(self, sources: Sequence[Dataset]) -> FindingT:
        prepared = self.preprocess(sources)
        return self.postprocess(self.predict(prepared), prepared)

"""The pipeline seam shared by the X-ray and CT pipelines.

A pipeline is ``preprocess -> predict -> postprocess`` on the decoded source datasets of one
study, then ``build_outputs`` turns the finding into DICOM objects (SR, SC, SEG) for the PACS.
The worker only talks to this interface, so a new pipeline plugs in without touching it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from pydicom import Dataset

PreparedT = TypeVar("PreparedT")
RawT = TypeVar("RawT")
FindingT = TypeVar("FindingT")


class PipelineError(Exception):
    """The analysis failed; the message is shown in the job log (no patient data)."""


class NotAnalysable(PipelineError):
    """The study is valid DICOM but not something this pipeline analyses (a single CT slice,
    a non-axial series, no lungs in view): the job is ``ignored`` with this reason, since a
    retry cannot change the outcome."""


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the model behind a result; flows into the outputs' algorithm identification."""

    name: str
    version: str
    classes: tuple[str, ...] = ()
    family: str = "Artificial Intelligence"


@dataclass(frozen=True)
class OutputContext:
    """What the output builders need besides the finding.

    ``result_version`` counts the analyses of one study (1, 2, ... after late instances); it is
    written into series descriptions.  UIDs are derived from the source instances and the model
    version (see ``dicom_node.outputs.uids``) so that re-running a job never duplicates results.
    """

    result_version: int = 1
    manufacturer: str = "dicom-node"
    software_version: str = "0.1.0"
    institution_name: str | None = None


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

    @abstractmethod
    def build_outputs(
        self, finding: FindingT, sources: Sequence[Dataset], context: OutputContext
    ) -> list[Dataset]:
        """DICOM objects to send back to the PACS, in the sources' study."""

    def summarise(self, finding: FindingT) -> dict[str, Any]:
        """A small JSON-able summary (label, probabilities, volumes): job log and ``classify``."""
        return {}

    def warm_up(self) -> None:
        """Trace compiled functions once at start, so the first study does not pay for it."""

    def run(self, sources: Sequence[Dataset]) -> FindingT:
        prepared = self.preprocess(sources)
        return self.postprocess(self.predict(prepared), prepared)

"""Pipelines by name, each paired with its output builder; loaded once per process and kept.

The registry is the one place that knows both sides: a pipeline turns sources into a finding,
its output builder turns the finding into DICOM objects, and neither imports the other (both
depend only on :mod:`dicom_node.domain`).  The pairing is typed: ``LoadedPipeline[F]`` holds a
``Pipeline[..., F]`` and an ``OutputBuilder[F]``, so mypy refuses a builder that takes another
finding than its pipeline makes.  Builtins are factories that import their modules on first use
(TensorFlow, highdicom); tests pass ``factories`` instead.  The registry is the only model cache:
``XrayPipeline.load`` (the classifier and, for models that look at the lung fields, the lung
segmentation named by its card) loads afresh on every call.  The CT pipeline has no model and
never imports TensorFlow; the TensorFlow device is reported once a pipeline that uses it loads.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pydicom import Dataset

from dicom_node.domain import CtFinding, ModelInfo, OutputContext, XrayFinding
from dicom_node.pipelines.base import Pipeline

log = logging.getLogger(__name__)

FindingT = TypeVar("FindingT")
FindingT_contra = TypeVar("FindingT_contra", contravariant=True)


class OutputBuilder(Protocol[FindingT_contra]):
    """(finding, sources, context, model) -> the DICOM objects to send back, in the sources'
    study."""

    def __call__(
        self,
        finding: FindingT_contra,
        sources: Sequence[Dataset],
        context: OutputContext,
        model: ModelInfo,
        /,
    ) -> list[Dataset]: ...


@dataclass(frozen=True)
class LoadedPipeline(Generic[FindingT]):
    """A loaded pipeline and the output builder for its findings."""

    name: str
    pipeline: Pipeline[Any, Any, FindingT]
    builder: OutputBuilder[FindingT]

    def build_outputs(
        self, finding: FindingT, sources: Sequence[Dataset], context: OutputContext
    ) -> list[Dataset]:
        """DICOM objects for ``finding`` (SR, SC, SEG), identified by the pipeline's model."""
        return self.builder(finding, sources, context, self.pipeline.model_info)


def load_xray(models_dir: Path | None) -> LoadedPipeline[XrayFinding]:
    from dicom_node.outputs.xray import build_xray_outputs
    from dicom_node.pipelines.xray.pipeline import XrayPipeline

    return LoadedPipeline("xray", XrayPipeline.load(models_dir), build_xray_outputs)


def load_ct(models_dir: Path | None) -> LoadedPipeline[CtFinding]:
    from dicom_node.outputs.ct import build_ct_outputs
    from dicom_node.pipelines.ct.pipeline import CtPipeline

    return LoadedPipeline("ct", CtPipeline.load(models_dir), build_ct_outputs)


# name (as the routing table names it) -> factory of the loaded pipeline.
BUILTIN_PIPELINES: Mapping[str, Callable[[Path | None], LoadedPipeline[Any]]] = {
    "xray": load_xray,
    "ct": load_ct,
}


class PipelineRegistry:
    """Lazily loads each pipeline (and imports its output builder) on first use; thread-safe."""

    def __init__(
        self,
        models_dir: Path | None = None,
        factories: Mapping[str, Callable[[], LoadedPipeline[Any]]] | None = None,
    ) -> None:
        self._models_dir = models_dir
        self._factories = dict(factories or {})
        self._loaded: dict[str, LoadedPipeline[Any]] = {}
        self._lock = threading.Lock()
        self.device: str | None = None  # "GPU (n)" or "CPU", known once a model is loaded

    def names(self) -> list[str]:
        return sorted(set(BUILTIN_PIPELINES) | set(self._factories))

    def get(self, name: str) -> LoadedPipeline[Any]:
        with self._lock:
            loaded = self._loaded.get(name)
            if loaded is None:
                loaded = self._build(name)
                self._loaded[name] = loaded
                if self.device is None and "tensorflow" in sys.modules:
                    self.device = _tensorflow_device()
                info = loaded.pipeline.model_info
                log.info("loaded %s pipeline: model %s %s", name, info.name, info.version)
            return loaded

    def loaded(self) -> list[str]:
        """Names loaded so far; never waits for a load in progress (``/healthz`` calls it)."""
        return sorted(self._loaded.copy())  # a dict copy is atomic under the GIL

    def warm_up(self, name: str) -> None:
        """Load the pipeline, import its output builder (highdicom: a third of a second) and
        trace its compiled functions, so the first study does not pay for any of it."""
        self.get(name).pipeline.warm_up()

    def _build(self, name: str) -> LoadedPipeline[Any]:
        if name in self._factories:
            return self._factories[name]()
        if name not in BUILTIN_PIPELINES:
            raise KeyError(f"unknown pipeline {name!r}")
        return BUILTIN_PIPELINES[name](self._models_dir)


def _tensorflow_device() -> str:
    """TensorFlow places models on a GPU by itself when it sees one; say which it is."""
    try:
        import tensorflow as tf
    except ImportError:
        return "none"
    gpus = tf.config.list_physical_devices("GPU")
    device = f"GPU ({len(gpus)})" if gpus else "CPU"
    log.info("TensorFlow %s runs on %s", tf.__version__, device)
    return device

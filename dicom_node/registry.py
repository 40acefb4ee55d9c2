"""Pipelines by name, each paired with its output builder; loaded once per process and kept.

The registry is the one place that knows both sides: a pipeline turns sources into a finding,
its output builder turns the finding into DICOM objects, and neither imports the other (both
depend only on :mod:`dicom_node.domain`).  Builtins are data, ``"module:attribute"`` pairs
imported on first use; tests pass ``factories`` instead.  The registry is the only model cache:
``XrayPipeline.load`` (the classifier and, for models that look at the lung fields, the lung
segmentation named by its card) loads afresh on every call.  The CT pipeline has no model and
never imports TensorFlow; the TensorFlow device is reported once a pipeline that uses it loads.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset

from dicom_node.domain import ModelInfo, OutputContext
from dicom_node.pipelines.base import Pipeline

log = logging.getLogger(__name__)

AnyPipeline = Pipeline[Any, Any, Any]
# (finding, sources, context, model) -> the DICOM objects to send back, in the sources' study.
OutputBuilder = Callable[[Any, Sequence[Dataset], OutputContext, ModelInfo], list[Dataset]]

# name -> ("module:Class" with ``load(models_dir: Path | None)``, "module:builder function").
BUILTIN_PIPELINES: Mapping[str, tuple[str, str]] = {
    "xray": (
        "dicom_node.pipelines.xray.pipeline:XrayPipeline",
        "dicom_node.outputs.xray:build_xray_outputs",
    ),
    "ct": (
        "dicom_node.pipelines.ct.pipeline:CtPipeline",
        "dicom_node.outputs.ct:build_ct_outputs",
    ),
}


@dataclass(frozen=True)
class LoadedPipeline:
    """A loaded pipeline and the output builder for its findings."""

    name: str
    pipeline: AnyPipeline
    builder: OutputBuilder

    def build_outputs(
        self, finding: Any, sources: Sequence[Dataset], context: OutputContext
    ) -> list[Dataset]:
        """DICOM objects for ``finding`` (SR, SC, SEG), identified by the pipeline's model."""
        return self.builder(finding, sources, context, self.pipeline.model_info)


class PipelineRegistry:
    """Lazily loads each pipeline (and imports its output builder) on first use; thread-safe."""

    def __init__(
        self,
        models_dir: Path | None = None,
        factories: Mapping[str, Callable[[], LoadedPipeline]] | None = None,
    ) -> None:
        self._models_dir = models_dir
        self._factories = dict(factories or {})
        self._loaded: dict[str, LoadedPipeline] = {}
        self._lock = threading.Lock()
        self.device: str | None = None  # "GPU (n)" or "CPU", known once a model is loaded

    def names(self) -> list[str]:
        return sorted(set(BUILTIN_PIPELINES) | set(self._factories))

    def get(self, name: str) -> LoadedPipeline:
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

    def _build(self, name: str) -> LoadedPipeline:
        if name in self._factories:
            return self._factories[name]()
        if name not in BUILTIN_PIPELINES:
            raise KeyError(f"unknown pipeline {name!r}")
        pipeline_path, builder_path = BUILTIN_PIPELINES[name]
        pipeline: AnyPipeline = _resolve(pipeline_path).load(self._models_dir)
        builder: OutputBuilder = _resolve(builder_path)
        return LoadedPipeline(name=name, pipeline=pipeline, builder=builder)


def _resolve(path: str) -> Any:
    module_name, attribute = path.split(":")
    return getattr(importlib.import_module(module_name), attribute)


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

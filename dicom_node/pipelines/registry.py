"""Pipelines by name, loaded once per process and kept (models stay in memory)."""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dicom_node.pipelines.base import Pipeline

log = logging.getLogger(__name__)

# name -> "module:Class"; each class has ``load(models_dir: Path | None)``.
BUILTIN_PIPELINES: Mapping[str, str] = {
    "xray": "dicom_node.pipelines.xray:XrayPipeline",
    "ct": "dicom_node.pipelines.ct:CtPipeline",
}

AnyPipeline = Pipeline[Any, Any, Any]


class PipelineRegistry:
    """Lazily loads each pipeline on first use; thread-safe."""

    def __init__(
        self,
        models_dir: Path | None = None,
        factories: Mapping[str, Callable[[], AnyPipeline]] | None = None,
    ) -> None:
        self._models_dir = models_dir
        self._factories = dict(factories or {})
        self._loaded: dict[str, AnyPipeline] = {}
        self._lock = threading.Lock()
        self.device: str | None = None  # "GPU (n)" or "CPU", known once a model is loaded

    def names(self) -> list[str]:
        return sorted(set(BUILTIN_PIPELINES) | set(self._factories))

    def get(self, name: str) -> AnyPipeline:
        with self._lock:
            pipeline = self._loaded.get(name)
            if pipeline is None:
                pipeline = self._build(name)
                self._loaded[name] = pipeline
                if self.device is None:
                    self.device = _tensorflow_device()
                log.info(
                    "loaded %s pipeline: model %s %s",
                    name,
                    pipeline.model_info.name,
                    pipeline.model_info.version,
                )
            return pipeline

    def loaded(self) -> list[str]:
        with self._lock:
            return sorted(self._loaded)

    def _build(self, name: str) -> AnyPipeline:
        if name in self._factories:
            return self._factories[name]()
        if name not in BUILTIN_PIPELINES:
            raise KeyError(f"unknown pipeline {name!r}")
        module_name, class_name = BUILTIN_PIPELINES[name].split(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        pipeline: AnyPipeline = cls.load(self._models_dir)
        return pipeline


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

"""The X-ray model's out-of-distribution check: how far an image's features lie from training.

The card's ``ood`` section names a checksummed file with the training features' principal
subspace (``training.xray_head.ood_statistics``); an image whose pooled features lie further than
the card's threshold is not analysable.
"""

from __future__ import annotations

import numpy as np

from dicom_node.errors import PipelineError
from dicom_node.pipelines.model_card import OodSpec
from dicom_node.pipelines.model_store import CHECKSUM_FILE, ModelArtefact, checksummed_files


class FeatureDistance:
    """The card's out-of-distribution check: distance of pooled features to the training set."""

    def __init__(self, stats: dict[str, np.ndarray], spec: OodSpec) -> None:
        self.mean = np.asarray(stats["mean"], np.float32)
        self.components = np.asarray(stats["components"], np.float32)
        self.scale = np.asarray(stats["scale"], np.float32)
        self.spec = spec
        d, k = self.components.shape
        if self.mean.shape != (d,) or self.scale.shape != (k,):
            raise PipelineError(
                f"{spec.file}: mean {self.mean.shape}, components {self.components.shape} and "
                f"scale {self.scale.shape} do not fit together"
            )

    @classmethod
    def load(cls, artefact: ModelArtefact, spec: OodSpec) -> FeatureDistance:
        path = artefact.directory / spec.file
        if spec.file not in checksummed_files(artefact.directory):
            # find_artefact verifies only what SHA256SUMS lists: an unlisted file is unverified.
            raise PipelineError(f"{path} is not listed in {CHECKSUM_FILE}: refusing to use it")
        with np.load(path, allow_pickle=False) as data:
            return cls({key: data[key] for key in ("mean", "components", "scale")}, spec)

    @property
    def dimensions(self) -> int:
        return int(self.mean.shape[0])

    def __call__(self, features: np.ndarray) -> np.ndarray:
        projected = (np.asarray(features, np.float32) - self.mean) @ self.components
        return np.asarray(np.linalg.norm(projected / self.scale, axis=1), np.float64)

    def reason(self, distance: float) -> str | None:
        """Why an image with this distance is refused; None when it is like the training set."""
        if distance <= self.spec.threshold:
            return None
        return (
            f"image unlike the training radiographs (feature distance {distance:.1f} > "
            f"{self.spec.threshold:.1f})"
        )

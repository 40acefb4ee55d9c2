"""Shipped model artefacts: ``models/<name>/<version>/`` with weights, model card and checksum.

Layout of one artefact directory::

    model.keras        Keras 3 weights and graph
    model_card.json    machine-readable card (classes, input size, metrics, command, ...)
    model_card.md      the same for people
    SHA256SUMS         ``<sha256>  model.keras`` (sha256sum format), checked before loading

The node refuses to load weights whose checksum does not match: a truncated or swapped file
must not silently produce findings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dicom_node.errors import ModelStoreError
from dicom_node.pipelines.model_card import ModelCard, SeverityCard

__all__ = [
    "CARD_FILE",
    "CHECKSUM_FILE",
    "WEIGHTS_FILE",
    "CardT",
    "ModelArtefact",
    "artefact_directory",
    "artefact_versions",
    "checksummed_files",
    "default_models_dir",
    "find_artefact",
    "load_keras_model",
    "read_card",
    "read_severity_card",
    "sha256_file",
    "verify_checksums",
    "write_checksums",
]

CardT = TypeVar("CardT")
WEIGHTS_FILE = "model.keras"
CARD_FILE = "model_card.json"
CHECKSUM_FILE = "SHA256SUMS"


@dataclass(frozen=True)
class ModelArtefact:
    name: str
    version: str
    directory: Path
    card: ModelCard

    @property
    def weights_path(self) -> Path:
        return self.directory / WEIGHTS_FILE


def default_models_dir() -> Path:
    """``$DICOM_NODE_MODELS_DIR``, else the repository's ``models/`` next to the package."""
    env = os.environ.get("DICOM_NODE_MODELS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "models"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: Path, files: tuple[str, ...] = (WEIGHTS_FILE,)) -> None:
    lines = [f"{sha256_file(directory / name)}  {name}\n" for name in files]
    (directory / CHECKSUM_FILE).write_text("".join(lines))


def verify_checksums(directory: Path) -> None:
    sums = directory / CHECKSUM_FILE
    if not sums.is_file():
        raise ModelStoreError(f"{sums} is missing: refusing to load unverified weights")
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        expected, name = line.split(maxsplit=1)
        target = directory / name.strip().lstrip("*")
        if not target.is_file():
            raise ModelStoreError(f"{target} is listed in {CHECKSUM_FILE} but missing")
        actual = sha256_file(target)
        if actual != expected:
            raise ModelStoreError(
                f"checksum mismatch for {target}: expected {expected[:12]}..., got {actual[:12]}..."
            )


def _version_key(version: str) -> tuple[int | str, ...]:
    return tuple(int(part) if part.isdigit() else part for part in version.split("."))


def artefact_versions(name: str, models_dir: Path | None = None) -> list[str]:
    """The versions of ``name`` that have a card, oldest first."""
    root = (models_dir or default_models_dir()) / name
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if (p / CARD_FILE).is_file()), key=_version_key)


def artefact_directory(
    name: str, version: str | None = None, models_dir: Path | None = None, verify: bool = True
) -> Path:
    """``<models>/<name>/<version>`` (newest version unless given), checksums verified."""
    root = (models_dir or default_models_dir()) / name
    if version is None:
        versions = artefact_versions(name, models_dir)
        if not versions:
            raise ModelStoreError(f"no model artefact found under {root}")
        version = versions[-1]
    directory = root / version
    if not (directory / CARD_FILE).is_file():
        raise ModelStoreError(f"{directory / CARD_FILE} is missing")
    if verify:
        verify_checksums(directory)
    return directory


def find_artefact(
    name: str, version: str | None = None, models_dir: Path | None = None, verify: bool = True
) -> ModelArtefact:
    """Locate ``name`` (newest version unless ``version`` is given) and verify its checksum."""
    directory = artefact_directory(name, version, models_dir, verify)
    return ModelArtefact(
        name=name,
        version=directory.name,
        directory=directory,
        card=read_card(directory / CARD_FILE),
    )


def checksummed_files(directory: Path) -> set[str]:
    """The file names ``SHA256SUMS`` lists (and ``find_artefact`` therefore verified)."""
    sums = directory / CHECKSUM_FILE
    lines = sums.read_text().splitlines() if sums.is_file() else []
    return {line.split(maxsplit=1)[1].strip().lstrip("*") for line in lines if line.strip()}


def read_card(path: Path) -> ModelCard:
    """``model_card.json`` parsed and validated; ModelStoreError names the file and the field."""
    return _read(path, ModelCard.from_json)


def _read(path: Path, parse: Callable[[Any], CardT]) -> CardT:
    try:
        return parse(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise ModelStoreError(f"{path} is not valid JSON: {exc}") from exc
    except ModelStoreError as exc:
        raise ModelStoreError(f"{path}: {exc}") from exc


def load_keras_model(artefact: ModelArtefact) -> Any:
    """Load the artefact's Keras model for inference (no optimizer state)."""
    import keras  # imported here: TensorFlow takes seconds to import

    return keras.models.load_model(artefact.weights_path, compile=False)


def read_severity_card(path: Path) -> SeverityCard:
    """A severity head's ``model_card.json`` (``dicom_node.pipelines.xray.severity``)."""
    return _read(path, SeverityCard.from_json)

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_node.errors import ModelStoreError
from dicom_node.model_card import ModelCard

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
    return Path(__file__).resolve().parent.parent / "models"


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


def find_artefact(
    name: str, version: str | None = None, models_dir: Path | None = None, verify: bool = True
) -> ModelArtefact:
    """Locate ``name`` (newest version unless ``version`` is given) and verify its checksum."""
    root = (models_dir or default_models_dir()) / name
    if version is None:
        versions = sorted(
            (p.name for p in root.iterdir() if (p / CARD_FILE).is_file()) if root.is_dir() else [],
            key=_version_key,
        )
        if not versions:
            raise ModelStoreError(f"no model artefact found under {root}")
        version = versions[-1]
    directory = root / version
    card_path = directory / CARD_FILE
    if not card_path.is_file():
        raise ModelStoreError(f"{card_path} is missing")
    if verify:
        verify_checksums(directory)
    return ModelArtefact(name=name, version=version, directory=directory, card=read_card(card_path))


def read_card(path: Path) -> ModelCard:
    """``model_card.json`` parsed and validated; ModelStoreError names the file and the field."""
    try:
        return ModelCard.from_json(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise ModelStoreError(f"{path} is not valid JSON: {exc}") from exc
    except ModelStoreError as exc:
        raise ModelStoreError(f"{path}: {exc}") from exc


def load_keras_model(artefact: ModelArtefact) -> Any:
    """Load the artefact's Keras model for inference (no optimizer state)."""
    import keras  # imported here: TensorFlow takes seconds to import

    return keras.models.load_model(artefact.weights_path, compile=False)

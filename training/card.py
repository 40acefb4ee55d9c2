"""The one model-card writer: ``model_card.json``, ``model_card.md`` and ``SHA256SUMS``.

Every training run writes its card with :func:`write`: the JSON is the typed card
(:mod:`dicom_node.pipelines.model_card`, what the node reads) with NaN/inf as null, and the
Markdown is rendered from the card as read back, by the section module of its kind
(:func:`markdown`):

- :class:`SeverityCard` (the severity head): :mod:`training.card_severity`;
- ``lung_segmentation``: :mod:`training.card_lungseg`;
- an X-ray classifier on the lung fields (``lung_crop``): :mod:`training.card_xray`;
- a whole-image classifier (``models/xray_classifier/1.0.0``): :mod:`training.card_whole_image`.

The section modules import nothing of ``training``; the ``train_*`` scripts build the card and
call this module, never the other way round.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dicom_node.pipelines.model_card import ModelCard, SeverityCard
from dicom_node.pipelines.model_store import CARD_FILE, write_checksums
from training import card_lungseg, card_severity, card_whole_image, card_xray

__all__ = ["MARKDOWN_FILE", "clean", "markdown", "write"]

MARKDOWN_FILE = "model_card.md"
LUNG_SEGMENTATION = "lung_segmentation"

Card = TypeVar("Card", ModelCard, SeverityCard)


def clean(value: Any) -> Any:
    """NaN/inf -> None so the JSON is standard; tuples -> lists; numpy scalars -> Python."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def markdown(card: ModelCard | SeverityCard) -> str:
    """``model_card.md`` of any card ``training`` writes, by its kind."""
    if isinstance(card, SeverityCard):
        return card_severity.markdown(card)
    if card.name == LUNG_SEGMENTATION:
        return card_lungseg.markdown(card)
    if card.lung_crop is not None:
        return card_xray.markdown(card)
    return card_whole_image.markdown(card)


def write(card: Card, out: Path, checksummed: Sequence[str]) -> Card:
    """Write ``model_card.json`` and ``model_card.md`` into ``out``, then ``SHA256SUMS`` of
    ``checksummed`` (the files the node reads: weights, the card, ...); returns the card as
    written (NaN: None), which is what the Markdown shows."""
    data = clean(card.to_json())
    (out / CARD_FILE).write_text(json.dumps(data, indent=2) + "\n")
    written = type(card).from_json(data)
    (out / MARKDOWN_FILE).write_text(markdown(written))
    write_checksums(out, tuple(checksummed))
    return written

"""Data set access through ``manifest.csv`` (patient-grouped train/val/test splits).

Images are decoded with the node's own preprocessing
(:mod:`dicom_node.pipelines.xray.preprocessing`), so the arrays the model is trained on are exactly
what the node feeds it at inference time.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicom_node.pipelines.xray.preprocessing import read_image, to_model_input

__all__ = [
    "DEFAULT_DATA_DIR",
    "SOURCE_FAMILY",
    "Record",
    "load_inputs",
    "manifest_sha256",
    "read_manifest",
    "sample_weights",
    "select",
    "split_counts",
]

DEFAULT_DATA_DIR = Path("../shared/data")

# Sources that are the same underlying collection (the Kaggle pediatric set, resized by different
# redistributors) count as one family for source balancing and per-source reporting.
SOURCE_FAMILY = {"kaggle224": "kaggle", "kaggle640": "kaggle", "kaggleval": "kaggle"}


@dataclass(frozen=True)
class Record:
    path: str
    label: str
    modality: str
    source: str
    patient_id: str
    split: str
    width: int
    height: int
    age: int | None = None  # years, where the source gives it
    view: str = ""

    @property
    def family(self) -> str:
        return SOURCE_FAMILY.get(self.source, self.source)


def read_manifest(data_dir: Path) -> list[Record]:
    with (data_dir / "manifest.csv").open(newline="") as handle:
        return [
            Record(
                path=row["path"],
                label=row["class"],
                modality=row["modality"],
                source=row["source"],
                patient_id=row["patient_id"],
                split=row["split"],
                width=int(row["width"]),
                height=int(row["height"]),
                age=int(row["age"]) if row.get("age") else None,
                view=row.get("view", ""),
            )
            for row in csv.DictReader(handle)
        ]


def manifest_sha256(data_dir: Path) -> str:
    return hashlib.sha256((data_dir / "manifest.csv").read_bytes()).hexdigest()


def select(
    records: Iterable[Record],
    modality: str,
    classes: Sequence[str],
    split: str,
    limit_per_class: int | None = None,
) -> list[Record]:
    """Records of one split whose class is in ``classes`` (first ``limit_per_class`` of each)."""
    chosen = [r for r in records if r.modality == modality and r.split == split]
    chosen = [r for r in chosen if r.label in classes]
    if limit_per_class is not None:
        taken: Counter[str] = Counter()
        kept = []
        for record in chosen:
            if taken[record.label] < limit_per_class:
                kept.append(record)
                taken[record.label] += 1
        chosen = kept
    return chosen


def split_counts(records: Iterable[Record]) -> dict[str, dict[str, int]]:
    """{split: {class: n}} for the model card."""
    counts: dict[str, dict[str, int]] = {}
    for record in records:
        counts.setdefault(record.split, {}).setdefault(record.label, 0)
        counts[record.split][record.label] += 1
    return {split: dict(sorted(c.items())) for split, c in sorted(counts.items())}


def load_inputs(records: Sequence[Record], data_dir: Path, size: int) -> np.ndarray:
    """Model inputs ``(n, size, size, 1)`` float32, through the node's preprocessing."""

    def one(record: Record) -> np.ndarray:
        return to_model_input(read_image(data_dir / record.path).display, size)

    with ThreadPoolExecutor(max_workers=2) as pool:
        arrays = list(pool.map(one, records))
    if not arrays:
        return np.zeros((0, size, size, 1), np.float32)
    return np.stack(arrays).astype(np.float32)


def sample_weights(
    labels: Sequence[str], families: Sequence[str], classes: Sequence[str], source_balance: float
) -> np.ndarray:
    """Class-balanced weights, optionally also balancing sources within each class.

    Each class gets the same total weight (class weighting for imbalance).  With
    ``source_balance`` = a > 0, an image of source s within class c is weighted by
    ``n_cs ** -a`` (renormalised so the class total is unchanged): a = 0.5 lets the few adult
    ``ieee`` normal and bacterial images count more, which works against the data set's
    "pediatric = pneumonia, adult figure = COVID-19" shortcut.
    """
    labels_arr = np.asarray(labels)
    families_arr = np.asarray(families)
    weights = np.zeros(len(labels_arr), np.float64)
    for label in classes:
        in_class = labels_arr == label
        n_class = int(in_class.sum())
        if n_class == 0:
            continue
        raw = np.zeros(len(labels_arr))
        for family in np.unique(families_arr[in_class]):
            members = in_class & (families_arr == family)
            raw[members] = float(members.sum()) ** -source_balance
        raw[in_class] *= n_class / raw[in_class].sum()
        weights[in_class] = raw[in_class] * len(labels_arr) / (len(classes) * n_class)
    return weights.astype(np.float32)

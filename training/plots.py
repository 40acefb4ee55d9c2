"""PNG plots of a run: training curves, confusion matrix, ROC curves, reliability diagram."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on the training machines

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

__all__ = [
    "confusion",
    "reliability",
    "roc",
    "training_curves",
]


def training_curves(history: Mapping[str, Sequence[float]], path: Path, title: str) -> None:
    """Loss and accuracy per epoch for train and validation (as in the original demo)."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, history[key], label=f"train {key}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str
) -> None:
    values = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(values, cmap="Blues")
    for (i, j), v in np.ndenumerate(values):
        colour = "white" if v > values.max() / 2 else "black"
        ax.text(j, i, str(v), ha="center", va="center", color=colour)
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def roc(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    """One-vs-rest ROC curve per class."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for k, name in enumerate(classes):
        positives = y == k
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, k])
        ax.plot(fpr, tpr, label=name)
        if len(classes) == 2:
            break  # the other curve is the same one mirrored
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reliability(bins: Sequence[Mapping[str, Any]], ece: float, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
    ax.bar(centres, [b["accuracy"] for b in bins], width=0.09, alpha=0.7, label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", label="bins")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("confidence (top label)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {ece:.3f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

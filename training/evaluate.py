"""Evaluation: confusion matrix, sensitivity/specificity with CIs, ROC AUC, calibration, sources.

All functions take integer labels ``y`` (index into ``classes``) and probabilities ``probs``
``(n, n_classes)``.  Confidence intervals: Wilson score intervals for proportions; patient-grouped
percentile bootstrap for ROC AUC (images of one patient are not independent).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score

__all__ = [
    "Z95",
    "auc_with_ci",
    "decide",
    "evaluate",
    "expected_calibration_error",
    "fit_decision_weight",
    "fit_temperature",
    "macro_auc",
    "out_of_set",
    "per_source",
    "softmax",
    "wilson_ci",
]

Z95 = 1.959963984540054


def wilson_ci(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (NaN when there is nothing to count)."""
    if total == 0:
        return (math.nan, math.nan)
    p = successes / total
    denom = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    probs: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return probs


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising validation NLL."""

    def nll(log_t: float) -> float:
        probs = softmax(logits, math.exp(log_t))
        return float(-np.mean(np.log(probs[np.arange(len(y)), y] + 1e-12)))

    result = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(result.x))


def expected_calibration_error(
    probs: np.ndarray, y: np.ndarray, n_bins: int = 10
) -> tuple[float, list[dict[str, float]]]:
    """Top-label ECE with equal-width confidence bins, and the bins for a reliability plot."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece, bins = 0.0, []
    for lo, hi in itertools.pairwise(edges):
        members = (confidence > lo) & (confidence <= hi)
        if not members.any():
            continue
        acc, conf = float(correct[members].mean()), float(confidence[members].mean())
        ece += members.mean() * abs(acc - conf)
        bins.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "n": int(members.sum()),
                "accuracy": acc,
                "confidence": conf,
            }
        )
    return float(ece), bins


def _auc(y: np.ndarray, probs: np.ndarray, k: int) -> float:
    positives = y == k
    if positives.all() or not positives.any():
        return math.nan
    return float(roc_auc_score(positives, probs[:, k]))


def macro_auc(y: np.ndarray, probs: np.ndarray, n_classes: int) -> float:
    """Mean of the one-vs-rest AUCs of the classes that have positives and negatives."""
    point = [_auc(y, probs, k) for k in range(n_classes)]
    return float(np.nanmean(point)) if not np.isnan(point).all() else math.nan


def auc_with_ci(
    y: np.ndarray,
    probs: np.ndarray,
    groups: Sequence[str],
    n_classes: int,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """One-vs-rest AUC per class and macro, with patient-grouped bootstrap 95% CIs."""
    point = [_auc(y, probs, k) for k in range(n_classes)]
    group_ids = np.unique(np.asarray(groups), return_inverse=True)[1]
    members = [np.flatnonzero(group_ids == g) for g in range(group_ids.max() + 1)] if len(y) else []
    rng = np.random.default_rng(seed)
    samples: list[list[float]] = []
    for _ in range(n_boot if members else 0):
        chosen = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[g] for g in chosen])
        samples.append([_auc(y[idx], probs[idx], k) for k in range(n_classes)])
    boot = np.array(samples) if samples else np.full((1, n_classes), math.nan)

    def ci(values: np.ndarray) -> list[float]:
        values = values[~np.isnan(values)]
        if len(values) < max(10, n_boot // 2):
            return [math.nan, math.nan]
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]

    macro_boot = np.nanmean(boot, axis=1) if not np.isnan(boot).all() else boot[:, 0]
    return {
        "per_class": {k: {"auc": point[k], "ci95": ci(boot[:, k])} for k in range(n_classes)},
        "macro": {
            "auc": macro_auc(y, probs, n_classes),
            "ci95": ci(macro_boot),
        },
    }


def decide(probs: np.ndarray, weights: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """The label rule of the node: ``argmax_k(p_k * w_k)`` (plain argmax without weights)."""
    scores = probs if weights is None else probs * np.asarray(weights)[np.newaxis, :]
    labels: np.ndarray = scores.argmax(axis=1)
    return labels


def fit_decision_weight(
    probs: np.ndarray, y: np.ndarray, k: int, target_sensitivity: float, max_weight: float = 10.0
) -> float:
    """Smallest weight w >= 1 on class ``k`` giving at least the target sensitivity (validation).

    A triage operating point: missing the target class costs more than a false alarm.
    """
    for w in np.exp(np.linspace(0.0, np.log(max_weight), 400)):
        weights = np.ones(probs.shape[1])
        weights[k] = w
        if (decide(probs[y == k], weights) == k).mean() >= target_sensitivity:
            return float(w)
    return float(max_weight)


def evaluate(
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    groups: Sequence[str],
    sources: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    weights: Sequence[float] | None = None,
) -> dict[str, Any]:
    """All metrics of one split (see module docstring); JSON-serialisable.

    Labels (confusion matrix, sensitivity, specificity, accuracy) follow :func:`decide` with
    ``weights``; ROC AUC and calibration use the probabilities themselves.
    """
    n_classes = len(classes)
    pred = decide(probs, weights)
    matrix = confusion_matrix(y, pred, labels=list(range(n_classes)))
    per_class = {}
    for k, name in enumerate(classes):
        tp = int(matrix[k, k])
        fn = int(matrix[k].sum() - tp)
        fp = int(matrix[:, k].sum() - tp)
        tn = int(matrix.sum() - tp - fn - fp)
        per_class[name] = {
            "n": tp + fn,
            "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
            "sensitivity_ci95": list(wilson_ci(tp, tp + fn)),
            "specificity": tn / (tn + fp) if tn + fp else math.nan,
            "specificity_ci95": list(wilson_ci(tn, tn + fp)),
            "ppv": tp / (tp + fp) if tp + fp else math.nan,
        }
    aucs = auc_with_ci(y, probs, groups, n_classes, n_boot=n_boot, seed=seed)
    for k, name in enumerate(classes):
        per_class[name]["roc_auc"] = aucs["per_class"][k]["auc"]
        per_class[name]["roc_auc_ci95"] = aucs["per_class"][k]["ci95"]
    ece, bins = expected_calibration_error(probs, y)
    correct = int((pred == y).sum())
    report = classification_report(
        y, pred, labels=list(range(n_classes)), target_names=list(classes), zero_division=0
    )
    return {
        "n": len(y),
        "accuracy": correct / len(y) if len(y) else math.nan,
        "accuracy_ci95": list(wilson_ci(correct, len(y))),
        "macro_roc_auc": aucs["macro"]["auc"],
        "macro_roc_auc_ci95": aucs["macro"]["ci95"],
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "classification_report": report,
        "ece": ece,
        "reliability_bins": bins,
        "per_source": per_source(y, probs, classes, sources, weights),
    }


def per_source(
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    sources: Sequence[str],
    weights: Sequence[float] | None = None,
) -> dict[str, Any]:
    """For each source: n, accuracy (Wilson CI), and the confusion rows of its true classes."""
    sources_arr = np.asarray(sources)
    pred = decide(probs, weights)
    result: dict[str, Any] = {}
    for source in sorted(set(sources_arr.tolist())):
        members = sources_arr == source
        correct = int((pred[members] == y[members]).sum())
        total = int(members.sum())
        rows = {}
        for k, name in enumerate(classes):
            in_class = members & (y == k)
            if in_class.any():
                counts = np.bincount(pred[in_class], minlength=len(classes))
                rows[name] = {classes[j]: int(counts[j]) for j in range(len(classes))}
        result[source] = {
            "n": total,
            "accuracy": correct / total,
            "accuracy_ci95": list(wilson_ci(correct, total)),
            "predicted_by_true_class": rows,
            "macro_roc_auc": (
                float(
                    np.nanmean([_auc(y[members], probs[members], k) for k in range(len(classes))])
                )
                if len(set(y[members].tolist())) > 1
                else None
            ),
        }
    return result


def out_of_set(
    probs: np.ndarray,
    classes: Sequence[str],
    sources: Sequence[str],
    weights: Sequence[float] | None = None,
) -> dict[str, Any]:
    """How images of a class the model does not know (e.g. viral pneumonia) get labelled."""
    sources_arr = np.asarray(sources)
    pred = decide(probs, weights)
    result: dict[str, Any] = {}
    for source in ["all", *sorted(set(sources_arr.tolist()))]:
        members = np.ones(len(pred), bool) if source == "all" else sources_arr == source
        counts = np.bincount(pred[members], minlength=len(classes))
        result[source] = {
            "n": int(members.sum()),
            "predicted": {classes[j]: int(counts[j]) for j in range(len(classes))},
            "mean_probability": {
                classes[j]: float(probs[members, j].mean()) if members.any() else math.nan
                for j in range(len(classes))
            },
        }
    return result

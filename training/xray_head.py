"""The X-ray classifier's head on frozen ImageNet features, and the checks around it.

- :func:`fit_head`: multinomial logistic regression on standardised pooled features, with
  class- and source-balanced sample weights; folded into one Dense layer (:class:`Head`).
- :func:`leave_one_source_out`: for each source family, a head fitted without it predicts it.
  Pooled, these out-of-source predictions stand in for "a hospital the model has not seen":
  they choose the regularisation and the COVID-19 triage weight.
- :func:`ood_statistics`: the principal subspace of the training features, for the node's
  feature-distance check.
- :func:`shortcut_probe`: how well the source can be read from image size/intensity statistics
  and from the features (grouped cross-validation), and the class from the statistics alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold

from training.data import sample_weights
from training.evaluate import decide

__all__ = [
    "Fitted",
    "Head",
    "Selection",
    "covid_vs_normal_auc",
    "covid_weight_for",
    "fit_head",
    "fit_views",
    "leave_one_source_out",
    "ood_distance",
    "ood_statistics",
    "rates_by_source",
    "shortcut_probe",
]


@dataclass(frozen=True)
class Head:
    """logits = features @ kernel + bias (standardisation folded in)."""

    kernel: np.ndarray  # (d, classes)
    bias: np.ndarray  # (classes,)

    def logits(self, features: np.ndarray) -> np.ndarray:
        out: np.ndarray = features @ self.kernel + self.bias
        return out


@dataclass
class Selection:
    """The head chosen by leave-one-source-out, with its out-of-source logits."""

    c: float
    source_balance: float
    grid: list[dict[str, Any]]
    loso_logits: np.ndarray  # for the dev rows (train+val, analysable, 3 classes)
    loso_extra_logits: np.ndarray | None  # out-of-set classes of the dev splits


@dataclass
class Fitted:
    """The final head with its temperature and the label rule's per-class weights."""

    head: Head
    temperature: float
    weights: np.ndarray


def fit_head(
    features: np.ndarray,
    y: np.ndarray,
    families: Sequence[str],
    classes: Sequence[str],
    c: float,
    source_balance: float,
) -> Head:
    labels = [classes[k] for k in y]
    weights = sample_weights(labels, list(families), classes, source_balance)
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    model = LogisticRegression(C=c, max_iter=3000, tol=1e-5)
    model.fit((features - mean) / std, y, sample_weight=weights)
    coef = model.coef_.T / std[:, np.newaxis]  # (d, classes)
    bias = model.intercept_ - (mean / std) @ model.coef_.T
    return Head(kernel=coef.astype(np.float32), bias=bias.astype(np.float32))


def leave_one_source_out(
    features: np.ndarray,
    y: np.ndarray,
    families: Sequence[str],
    classes: Sequence[str],
    c: float,
    source_balance: float,
    train_rows: np.ndarray,
    extra_features: np.ndarray | None = None,
    extra_families: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray | None]:
    """Out-of-source logits for every row (and for ``extra`` rows, e.g. unseen classes).

    ``features`` may hold several views per row (n, views, d): training uses every view of the
    ``train_rows``, prediction the first (unaugmented) one.
    """
    fam = np.asarray(families)
    out = np.zeros((len(y), len(classes)), np.float32)
    extra_out = None if extra_features is None else np.zeros((len(extra_features), len(classes)))
    extra_fam = np.asarray(extra_families)
    for family in sorted(set(fam.tolist())):
        fit_rows = train_rows & (fam != family)
        head = fit_views(features, y, fam.tolist(), classes, c, source_balance, fit_rows)
        held = fam == family
        out[held] = head.logits(features[held, 0])
        if extra_out is not None and extra_features is not None:
            sel = extra_fam == family
            if sel.any():
                extra_out[sel] = head.logits(extra_features[sel])
    return out, extra_out


def fit_views(
    features: np.ndarray,
    y: np.ndarray,
    families: Sequence[str],
    classes: Sequence[str],
    c: float,
    source_balance: float,
    rows: np.ndarray,
) -> Head:
    """A head fitted on every view of ``rows`` (features (n, views, d))."""
    views = features.shape[1]
    return fit_head(
        features[rows].reshape(-1, features.shape[-1]),
        np.repeat(y[rows], views),
        np.repeat(np.asarray(families)[rows], views).tolist(),
        classes,
        c,
        source_balance,
    )


def covid_vs_normal_auc(probs: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> float:
    k_covid, k_normal = classes.index("covid"), classes.index("normal")
    rows = (y == k_covid) | (y == k_normal)
    if len(set(y[rows].tolist())) < 2:
        return math.nan
    return float(roc_auc_score(y[rows] == k_covid, probs[rows, k_covid]))


def covid_weight_for(
    probs: np.ndarray, y: np.ndarray, k: int, sensitivity: float, max_weight: float = 20.0
) -> float:
    """Smallest weight w >= 1 on class k reaching ``sensitivity`` on rows of class k."""
    for w in np.exp(np.linspace(0.0, np.log(max_weight), 600)):
        weights = np.ones(probs.shape[1])
        weights[k] = w
        if (decide(probs[y == k], weights) == k).mean() >= sensitivity:
            return float(w)
    return float(max_weight)


def rates_by_source(
    probs: np.ndarray,
    y: np.ndarray,
    families: Sequence[str],
    classes: Sequence[str],
    weights: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """Per source and true class: n and the fraction labelled each class."""
    fam = np.asarray(families)
    pred = decide(probs, weights)
    table: dict[str, dict[str, Any]] = {}
    for family in sorted(set(fam.tolist())):
        rows: dict[str, Any] = {}
        for k, name in enumerate(classes):
            sel = (fam == family) & (y == k)
            if sel.any():
                counts = np.bincount(pred[sel], minlength=len(classes))
                rows[name] = {
                    "n": int(sel.sum()),
                    "labelled": {classes[j]: round(counts[j] / sel.sum(), 3) for j in range(3)},
                }
        table[family] = rows
    return table


def ood_statistics(features: np.ndarray, k: int = 32) -> dict[str, np.ndarray]:
    """mean (d,), components (d, k) and scale (k,) of the features' principal subspace.

    distance(f) = || ((f - mean) @ components) / scale ||: a Mahalanobis distance in the top-k
    principal directions (standardised per feature first, folded into ``components``).
    """
    mean = features.mean(axis=0)
    std = features.std(axis=0) + 1e-6
    z = (features - mean) / std
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    components = (vt[:k].T / std[:, np.newaxis]).astype(np.float32)
    # Directions with (almost) no training variance would make any image infinitely far.
    scale = np.maximum(s[:k], 1e-2 * s[0]) / math.sqrt(max(len(features) - 1, 1))
    scale = scale.astype(np.float32)
    return {"mean": mean.astype(np.float32), "components": components, "scale": scale}


def ood_distance(features: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    projected = (features - stats["mean"]) @ stats["components"]
    out: np.ndarray = np.linalg.norm(projected / stats["scale"], axis=1)
    return out


def _grouped_accuracy(x: np.ndarray, target: np.ndarray, groups: np.ndarray) -> float:
    pred = np.empty(len(target), dtype=target.dtype)
    for fit, test in GroupKFold(n_splits=5).split(x, target, groups):
        mean, std = x[fit].mean(axis=0), x[fit].std(axis=0) + 1e-6
        model = LogisticRegression(C=1.0, max_iter=3000)
        model.fit((x[fit] - mean) / std, target[fit])
        pred[test] = model.predict((x[test] - mean) / std)
    return float((pred == target).mean())


def _grouped_class_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n: int) -> float:
    probs = np.zeros((len(y), n))
    for fit, test in GroupKFold(n_splits=5).split(x, y, groups):
        mean, std = x[fit].mean(axis=0), x[fit].std(axis=0) + 1e-6
        model = LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced")
        model.fit((x[fit] - mean) / std, y[fit])
        probs[test] = model.predict_proba((x[test] - mean) / std)
    return float(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def shortcut_probe(
    stats: np.ndarray,
    features: np.ndarray,
    y: np.ndarray,
    families: Sequence[str],
    groups: Sequence[str],
    classes: Sequence[str],
) -> dict[str, Any]:
    """Can the source be read from image statistics / the features?  Grouped 5-fold CV."""
    fam = np.asarray(families)
    grp = np.asarray(groups)
    majority = max(np.unique(fam, return_counts=True)[1]) / len(fam)
    result: dict[str, Any] = {
        "source_from_image_statistics_accuracy": _grouped_accuracy(stats, fam, grp),
        "source_from_features_accuracy": _grouped_accuracy(features, fam, grp),
        "source_majority_baseline": float(majority),
        "class_from_image_statistics_macro_auc": _grouped_class_auc(stats, y, grp, len(classes)),
    }
    normal = y == classes.index("normal")
    if len(set(fam[normal].tolist())) > 1:
        nfam = fam[normal]
        result["normal_source_from_features_accuracy"] = _grouped_accuracy(
            features[normal], nfam, grp[normal]
        )
        result["normal_source_from_image_statistics_accuracy"] = _grouped_accuracy(
            stats[normal], nfam, grp[normal]
        )
        result["normal_source_majority_baseline"] = float(
            max(np.unique(nfam, return_counts=True)[1]) / len(nfam)
        )
    return result

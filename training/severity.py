"""The severity regressor: PLS on standardised features, patient-grouped (nested) CV, metrics.

Kept apart from the data and card code so it can be tested on synthetic numbers.  The fitted
regressor is folded into one linear map (``weights``, ``bias``) that the node applies with
numpy (``dicom_node.pipelines.xray.severity``).  The shipped run's grid and folds come from
``training/configs/xray_severity.toml``; the defaults here are the same values, for library use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "COMPONENTS_GRID",
    "FOLDS",
    "Design",
    "LinearMap",
    "choose_components",
    "cv_predictions",
    "fit",
    "group_folds",
    "level_agreement",
    "mae_ci",
    "nested_cv",
    "pearson_ci",
    "scaled_mae",
    "score_metrics",
]

COMPONENTS_GRID = (1, 2, 3, 4, 6)
FOLDS = 5
Z95 = 1.959963984540054


@dataclass(frozen=True)
class LinearMap:
    weights: np.ndarray  # (d, k)
    bias: np.ndarray  # (k,)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(np.asarray(x, np.float64) @ self.weights + self.bias)


def fit(x: np.ndarray, y: np.ndarray, components: int) -> LinearMap:
    """PLS regression with ``components`` on standardised ``x`` -> ``y`` (n, k), folded."""
    from sklearn.cross_decomposition import PLSRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    pls = PLSRegression(n_components=components, scale=False).fit(scaler.transform(x), y)
    coef = np.asarray(pls.coef_, np.float64).T  # (d, k): sklearn >= 1.3 stores (k, d)
    weights = coef / scaler.scale_[:, np.newaxis]
    bias = np.asarray(pls.intercept_, np.float64) - (scaler.mean_ / scaler.scale_) @ coef
    folded = LinearMap(weights, bias)
    expected = pls.predict(scaler.transform(x[:8]))
    if not np.allclose(folded(x[:8]), expected, atol=1e-6 * max(1.0, float(np.abs(y).max()))):
        raise AssertionError("the folded linear map does not reproduce the PLS predictions")
    return folded


def group_folds(
    groups: Sequence[str], folds: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays; every group (patient) in exactly one test fold."""
    unique = np.unique(np.asarray(groups))
    order = rng.permutation(len(unique))
    fold_of = {g: int(order[i]) % folds for i, g in enumerate(unique)}
    assigned = np.array([fold_of[g] for g in groups])
    for k in range(folds):
        yield np.flatnonzero(assigned != k), np.flatnonzero(assigned == k)


@dataclass(frozen=True)
class Design:
    """Rows of the regression: view v of image i is ``x[i, v]``; ``y[i]``; ``groups[i]``."""

    x: np.ndarray  # (n, views, d)
    y: np.ndarray  # (n, k)
    groups: Sequence[str]
    maxima: np.ndarray  # (k,): scores are clipped to [0, maximum]

    def rows(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All views of the images in ``index`` (augmented views are training rows)."""
        views = self.x.shape[1]
        x = self.x[index].reshape(len(index) * views, -1)
        return x, np.repeat(self.y[index], views, axis=0)

    def predict(self, model: LinearMap, index: np.ndarray) -> np.ndarray:
        """Predictions on the unaugmented view 0, clipped to the scores' ranges."""
        return np.asarray(np.clip(model(self.x[index, 0]), 0.0, self.maxima))


def cv_predictions(
    design: Design,
    components: int,
    rng: np.random.Generator,
    index: np.ndarray | None = None,
    folds: int = FOLDS,
) -> np.ndarray:
    """Out-of-fold predictions (len(index), k) by patient-grouped ``folds``-fold CV."""
    index = np.arange(len(design.y)) if index is None else index
    out = np.zeros((len(index), design.y.shape[1]))
    groups = [design.groups[int(i)] for i in index]
    for train, test in group_folds(groups, folds, rng):
        model = fit(*design.rows(index[train]), components)
        out[test] = design.predict(model, index[test])
    return out


def scaled_mae(pred: np.ndarray, y: np.ndarray, maxima: np.ndarray) -> float:
    """Mean absolute error of all scores, each in units of its range (the selection rule)."""
    return float((np.abs(pred - y) / maxima).mean())


def choose_components(
    design: Design,
    index: np.ndarray,
    rng: np.random.Generator,
    grid: Sequence[int] = COMPONENTS_GRID,
    folds: int = FOLDS,
) -> int:
    """The grid value with the lowest inner-CV range-scaled MAE on ``index``."""
    scores = {
        c: scaled_mae(cv_predictions(design, c, rng, index, folds), design.y[index], design.maxima)
        for c in grid
    }
    return min(scores, key=lambda c: scores[c])


def nested_cv(
    design: Design,
    repeats: int,
    seed: int,
    grid: Sequence[int] = COMPONENTS_GRID,
    folds: int = FOLDS,
) -> tuple[np.ndarray, list[list[int]]]:
    """Outer patient-grouped CV, ``repeats`` times: (repeats, n, k) out-of-fold predictions,
    with the components chosen by an inner grouped CV on each outer training part."""
    rng = np.random.default_rng(seed)
    n, k = design.y.shape
    out = np.zeros((repeats, n, k))
    chosen: list[list[int]] = []
    for r in range(repeats):
        picks = []
        for train, test in group_folds(design.groups, folds, rng):
            components = choose_components(design, train, rng, grid, folds)
            picks.append(components)
            out[r, test] = design.predict(fit(*design.rows(train), components), test)
        chosen.append(picks)
    return out, chosen


def pearson_ci(pred: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Pearson r with its 95 % CI (Fisher z)."""
    r = float(stats.pearsonr(pred, y)[0])
    z, se = np.arctanh(np.clip(r, -0.999999, 0.999999)), 1.0 / np.sqrt(len(y) - 3)
    return r, float(np.tanh(z - Z95 * se)), float(np.tanh(z + Z95 * se))


def mae_ci(
    pred: np.ndarray, y: np.ndarray, groups: Sequence[str], seed: int, rounds: int = 2000
) -> tuple[float, float, float]:
    """MAE with a 95 % CI from a patient-grouped bootstrap."""
    errors = np.abs(pred - y)
    unique = np.unique(np.asarray(groups))
    members = [np.flatnonzero(np.asarray(groups) == g) for g in unique]
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(rounds):
        picked = np.concatenate([members[i] for i in rng.integers(0, len(unique), len(unique))])
        means.append(errors[picked].mean())
    low, high = np.percentile(means, [2.5, 97.5])
    return float(errors.mean()), float(low), float(high)


def score_metrics(
    pred: np.ndarray, y: np.ndarray, groups: Sequence[str], seed: int
) -> dict[str, float | int]:
    mae, mae_low, mae_high = mae_ci(pred, y, groups, seed)
    r, r_low, r_high = pearson_ci(pred, y)
    return {
        "n": len(y),
        "mae": mae,
        "mae_ci95_low": mae_low,
        "mae_ci95_high": mae_high,
        "pearson_r": r,
        "pearson_r_ci95_low": r_low,
        "pearson_r_ci95_high": r_high,
    }


def level_agreement(
    predicted: np.ndarray, rated: np.ndarray, thresholds: Sequence[float]
) -> dict[str, object]:
    """Levels from predicted vs rated extent: exact and within-one agreement, confusion."""
    p = np.sum(predicted[:, np.newaxis] >= np.asarray(thresholds), axis=1)
    t = np.sum(rated[:, np.newaxis] >= np.asarray(thresholds), axis=1)
    levels = len(thresholds) + 1
    confusion = np.zeros((levels, levels), int)
    for a, b in zip(t, p, strict=True):
        confusion[a, b] += 1
    return {
        "exact": float((p == t).mean()),
        "within_one": float((np.abs(p - t) <= 1).mean()),
        "confusion_rated_by_predicted": confusion.tolist(),
        "rated_counts": np.bincount(t, minlength=levels).tolist(),
    }

"""The severity head (node side) and the regressor it was fitted with (training side)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dicom_node.domain import XRAY_CLASSES
from dicom_node.errors import PipelineError
from dicom_node.pipelines.model_card import SeverityCard
from dicom_node.pipelines.model_store import (
    CARD_FILE,
    artefact_directory,
    find_artefact,
    read_severity_card,
    write_checksums,
)
from dicom_node.pipelines.xray.severity import (
    LUNG_STATISTICS,
    MODEL_NAME,
    SeverityHead,
    lung_intensity_statistics,
    severity_level,
)
from training import severity

SHIPPED = artefact_directory(MODEL_NAME)


def lung_input(lower: float, upper: float, size: int = 64) -> np.ndarray:
    """A two-channel lung crop: two lung fields, their lower and upper halves at given grey."""
    image = np.full((size, size), 0.1, np.float32)
    mask = np.zeros((size, size), bool)
    mask[8:57, 6:28] = mask[8:57, 36:58] = True  # rows 8-56: the lower half from row 32
    image[8:32][mask[8:32]] = upper
    image[32:57][mask[32:57]] = lower
    return np.stack([image, mask.astype(np.float32) * 2.0], axis=-1)


def test_lung_statistics_see_brighter_lungs_and_where() -> None:
    clear, basal = lung_input(0.3, 0.3), lung_input(0.8, 0.3)
    a, b = lung_intensity_statistics(clear), lung_intensity_statistics(basal)
    assert a.shape == b.shape == (LUNG_STATISTICS,)
    assert b[0] > a[0]  # whole lungs brighter
    assert b[4] == pytest.approx(0.8) and b[8] == pytest.approx(0.3)  # lower, upper half means
    assert b[7] == pytest.approx(1.0) and a[3] == 0.0  # share brighter than BRIGHT
    # Pixels off the lungs do not count.
    outside = clear.copy()
    outside[..., 0][outside[..., 1] == 0] = 1.0
    np.testing.assert_allclose(lung_intensity_statistics(outside), a)
    assert not lung_intensity_statistics(np.zeros((8, 8, 2), np.float32)).any()


@pytest.mark.parametrize(
    ("extent", "level"), [(0.0, 0), (0.49, 0), (0.5, 1), (2.49, 1), (2.5, 2), (4.5, 3), (8.0, 3)]
)
def test_levels_follow_the_thresholds(extent: float, level: int) -> None:
    assert severity_level(extent, (0.5, 2.5, 4.5)) == level


def test_shipped_head_reads_the_shipped_classifier() -> None:
    card = read_severity_card(SHIPPED / CARD_FILE)
    classifier = find_artefact(card.features.model)  # the newest, as the node loads it
    assert (card.features.model, card.features.version) == (classifier.name, classifier.version)
    head = SeverityHead.for_classifier(classifier.name, classifier.version, SHIPPED.parent.parent)
    assert head is not None and head.feature_dimensions == 1280
    assert SeverityHead.for_classifier(classifier.name, "0.0.1", SHIPPED.parent.parent) is None


def _head(weights: np.ndarray, bias: np.ndarray, gate: str | None = "normal") -> SeverityHead:
    card = replace(read_severity_card(SHIPPED / CARD_FILE), gate_class=gate)
    return SeverityHead(card, weights, bias)


def test_scores_are_clipped_gated_by_p_normal_and_levelled() -> None:
    d = 4 + LUNG_STATISTICS
    weights = np.zeros((d, 2), np.float32)
    weights[0] = (2.0, 1.5)  # scores given disease: 2 x feature 0 (extent), 1.5 x (opacity)
    head = _head(weights, np.zeros(2, np.float32))
    features = np.array([[1.0, 0, 0, 0], [3.0, 0, 0, 0], [100.0, 0, 0, 0]], np.float32)
    inputs = [lung_input(0.3, 0.3)] * 3
    p = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], np.float32)
    first, second, third = head(features, inputs, p, XRAY_CLASSES)
    assert (first.geographic_extent, first.opacity) == pytest.approx((1.8, 1.35))
    assert (second.geographic_extent, second.opacity) == pytest.approx((3.0, 2.25))
    assert (third.geographic_extent, third.opacity) == pytest.approx((8.0, 6.0))  # clipped
    assert [s.level for s in (first, second, third)] == [1, 2, 3]
    ungated = _head(weights, np.zeros(2, np.float32), gate=None)
    assert ungated(features[:1], inputs[:1], p[:1], XRAY_CLASSES)[0].geographic_extent == 2.0


def test_a_head_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="do not fit"):
        _head(np.zeros((10, 3), np.float32), np.zeros(3, np.float32))
    # An unlisted weights file is not used; a card for another classifier is not picked.
    target = tmp_path / MODEL_NAME / "1.0.0"
    target.mkdir(parents=True)
    data = json.loads((SHIPPED / CARD_FILE).read_text())
    (target / CARD_FILE).write_text(json.dumps(data))
    np.savez(target / "severity.npz", weights=np.zeros((1292, 2)), bias=np.zeros(2))
    write_checksums(target, (CARD_FILE,))
    with pytest.raises(PipelineError, match="not listed"):
        SeverityHead.load(target)
    data["features"]["version"] = "9.9.9"
    (target / CARD_FILE).write_text(json.dumps(data))
    write_checksums(target, (CARD_FILE, "severity.npz"))
    features = SeverityCard.from_json(data).features
    assert SeverityHead.for_classifier(features.model, "2.0.0", tmp_path) is None
    assert SeverityHead.for_classifier(features.model, "9.9.9", tmp_path) is not None


# -- training.severity ------------------------------------------------------------------------


def _synthetic(n: int = 60, seed: int = 0) -> severity.Design:
    """Scores that are a noisy linear function of 30 features; 2 views per image; 40 patients."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2, 30))
    truth = np.stack([x[:, 0, 0] * 1.5 + 4.0, x[:, 0, 1] + 3.0], axis=1)
    x[:, 1] = x[:, 0] + rng.normal(scale=0.05, size=(n, 30))  # the "augmented" view
    y = np.clip(truth + rng.normal(scale=0.2, size=truth.shape), 0, [8, 6])
    groups = [f"p{i % 40}" for i in range(n)]
    return severity.Design(x=x, y=y, groups=groups, maxima=np.array([8.0, 6.0]))


def test_folded_pls_predicts_like_the_fitted_one_and_learns_the_relation() -> None:
    design = _synthetic()
    model = severity.fit(*design.rows(np.arange(60)), components=3)
    assert model.weights.shape == (30, 2)
    error = np.abs(design.predict(model, np.arange(60)) - design.y).mean()
    assert error < 0.4


def test_group_folds_keep_a_patient_in_one_test_fold() -> None:
    groups = [f"p{i % 7}" for i in range(30)]
    seen: dict[str, int] = {}
    tests = []
    for k, (train, test) in enumerate(severity.group_folds(groups, 5, np.random.default_rng(1))):
        assert not set(train) & set(test)
        for i in test:
            assert seen.setdefault(groups[i], k) == k
        tests.extend(test)
    assert sorted(tests) == list(range(30))


def test_nested_cv_is_honest_on_noise_and_good_on_signal() -> None:
    signal = _synthetic()
    oof, chosen = severity.nested_cv(signal, repeats=1, seed=0)
    assert np.abs(oof[0] - signal.y).mean() < 0.6
    assert all(c in severity.COMPONENTS_GRID for c in chosen[0])
    rng = np.random.default_rng(3)
    noise = replace(signal, y=rng.uniform(0, 6, size=signal.y.shape))
    oof, _ = severity.nested_cv(noise, repeats=1, seed=0)
    # Held-out patients: no better than predicting the mean (about 1.5 for uniform 0-6).
    assert np.abs(oof[0] - noise.y).mean() > 1.2


def test_level_agreement_and_confidence_intervals() -> None:
    rated = np.array([0.0, 1.0, 3.0, 6.0])
    agreement = severity.level_agreement(np.array([0.2, 3.0, 3.0, 8.0]), rated, (0.5, 2.5, 4.5))
    assert agreement["exact"] == 0.75 and agreement["within_one"] == 1.0
    assert agreement["confusion_rated_by_predicted"][1] == [0, 0, 1, 0]
    y = np.linspace(0, 8, 40)
    m = severity.score_metrics(y + 0.5, y, [f"p{i}" for i in range(40)], seed=0)
    assert m["mae"] == pytest.approx(0.5)
    assert m["pearson_r"] == pytest.approx(1.0)
    assert m["mae_ci95_low"] <= 0.5 <= m["mae_ci95_high"]

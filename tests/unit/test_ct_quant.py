"""Lesion quantification and severity scoring, against phantoms of known lesion volume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.pipelines.ct.focal import separate_focal_lesions
from dicom_node.pipelines.ct.lungs import segment_lungs
from dicom_node.pipelines.ct.quant import (
    REGIONS,
    Quantification,
    quantify,
    segment_lesions,
    severity_band,
)
from dicom_node.pipelines.ct.series import assemble, check_series
from tests.support.synthetic import Ball, PhantomSeries, make_phantom, write_phantom_series

ACCURACY_POINTS = 2.0  # involvement percent: the acceptance limit


def measure(series: PhantomSeries) -> Quantification:
    volume = assemble(check_series([pydicom.dcmread(p) for p in series.files])[0])
    lungs = segment_lungs(volume).labels
    lesions = segment_lesions(volume, lungs)
    separate_focal_lesions(volume, lungs, lesions)  # the pipeline's lesion step
    return quantify(volume, lungs, lesions)


@pytest.mark.parametrize(
    ("score", "involvement"),
    [
        (0, 0.0),
        (0, 0.49),
        (1, 0.5),
        (1, 4.99),
        (2, 5.0),
        (2, 25.0),
        (3, 25.01),
        (3, 50.0),
        (4, 50.5),
        (4, 75.0),
        (5, 75.01),
        (5, 100.0),
    ],
)
def test_severity_bands(score: int, involvement: float) -> None:
    assert severity_band(involvement) == score


PHANTOMS = {
    "typical seed 0": dict(seed=0),
    "typical seed 1": dict(seed=1),
    "typical seed 2": dict(seed=2),
    "many lesions": dict(seed=3, n_ggo=14, n_consolidation=8, n_pleural=6),
    "noisy": dict(seed=4, noise_hu=35.0),
    "only subpleural lesions": dict(seed=8, n_ggo=0, n_consolidation=0, n_pleural=8),
    # Heavy involvement (over 30 %): the error must not grow with the lesion burden.
    "heavy involvement": dict(
        seed=43, n_ggo=60, n_consolidation=16, n_pleural=10, ggo_radius=(28.0, 45.0)
    ),
    "heavy involvement seed 44": dict(
        seed=44, n_ggo=60, n_consolidation=16, n_pleural=10, ggo_radius=(28.0, 45.0)
    ),
}


@pytest.mark.parametrize("name", sorted(PHANTOMS))
def test_involvement_within_two_points_of_truth(tmp_path: Path, name: str) -> None:
    series = write_phantom_series(tmp_path, n_slices=48, size=128, **PHANTOMS[name])  # type: ignore[arg-type]
    q = measure(series)
    truth = series.truth
    assert truth.total.involvement_percent > 3  # the phantom does have lesions
    if name.startswith("heavy"):
        assert truth.total.involvement_percent >= 30
    for measured, expected in (
        (q.total, truth.total),
        (q.right, truth.right),
        (q.left, truth.left),
    ):
        assert abs(measured.involvement_percent - expected.involvement_percent) <= ACCURACY_POINTS
        assert measured.lung_ml == pytest.approx(expected.lung_ml, rel=0.02)
        # Each lesion type on its own, as a share of the lung, within the same limit.
        for got, want in (
            (measured.ggo_ml, expected.ggo_ml),
            (measured.consolidation_ml, expected.consolidation_ml),
        ):
            assert abs(100 * (got - want) / expected.lung_ml) <= ACCURACY_POINTS


def test_vessels_are_not_lesions(tmp_path: Path) -> None:
    series = write_phantom_series(
        tmp_path, n_slices=48, size=128, seed=5, n_ggo=0, n_consolidation=0, n_pleural=0,
        n_vessels=80,
    )  # fmt: skip
    q = measure(series)
    assert series.truth.total.lesion_ml == 0
    assert q.total.involvement_percent < 0.5
    assert q.severity_score == 0


def test_zones_split_lungs_by_typical_lobar_fractions(tmp_path: Path) -> None:
    series = write_phantom_series(tmp_path, n_slices=48, size=128, seed=6)
    q = measure(series)
    assert [r.name for r in q.regions] == [name for name, *_ in REGIONS]
    assert all("zone" in r.name for r in q.regions)
    for region, (_, _, low, high) in zip(q.regions, REGIONS, strict=True):
        lung = q.right if region.lung == 1 else q.left
        assert region.lung_ml / lung.lung_ml == pytest.approx(high - low, abs=0.03)
    assert sum(r.lung_ml for r in q.regions) == pytest.approx(q.total.lung_ml)
    assert sum(r.lesion_ml for r in q.regions) == pytest.approx(q.total.lesion_ml)
    assert q.severity_score == sum(r.score for r in q.regions)


def test_a_single_lesion_scores_only_its_zone(tmp_path: Path) -> None:
    base = make_phantom(size=128, n_slices=48, seed=7, n_ggo=0, n_consolidation=0, n_pleural=0)
    (cx, cy, cz), (_, b, c) = base.right_lung.center, base.right_lung.semi_axes
    # Low and posterior in the right lung: right lower zone.
    ball = Ball(
        center=(cx, cy + 0.3 * b, cz - 0.45 * c), radius=20.0, kind="consolidation", halo=8.0
    )
    series = write_phantom_series(tmp_path, phantom=dataclasses.replace(base, balls=(ball,)))
    q = measure(series)
    scores = {r.name: r.score for r in q.regions}
    assert scores["right lower zone"] >= 2
    assert {name: s for name, s in scores.items() if name != "right lower zone"} == {
        "right middle zone": 0,
        "right upper zone": 0,
        "left lower zone": 0,
        "left upper zone": 0,
    }
    assert q.left.lesion_ml < 1.0
    assert q.right.consolidation_ml == pytest.approx(series.truth.right.consolidation_ml, rel=0.1)
    truth = series.truth.right
    share = 100.0 * truth.consolidation_ml / truth.lesion_ml  # the core in its GGO halo
    assert np.isclose(q.right.consolidation_share_percent, share, atol=10.0)

"""The RSNA category from the 3-D pattern, on phantoms built to show each category."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom
import pytest

from dicom_node.domain import CtCategory, CtFinding
from dicom_node.pipelines.ct.pattern import NEGATIVE_BELOW_PERCENT
from dicom_node.pipelines.ct.pipeline import CtPipeline
from tests.support.synthetic import Ball, Phantom, make_phantom, write_phantom_series
from tests.support.synthetic.phantom import Ellipsoid


def _clean(seed: int) -> Phantom:
    return make_phantom(size=128, n_slices=48, seed=seed, n_ggo=0, n_consolidation=0, n_pleural=0)


def _at(lung: Ellipsoid, lateral: float, posterior: float, height: float) -> tuple[float, ...]:
    """A point of the lung by fractions of its semi-axes (lateral is away from the midline)."""
    (cx, cy, cz), (a, b, c) = lung.center, lung.semi_axes
    side = 1.0 if cx > 0 else -1.0
    return (cx + side * lateral * a, cy + posterior * b, cz + height * c)


def _run(tmp_path: Path, phantom: Phantom) -> CtFinding:
    series = write_phantom_series(tmp_path, phantom=phantom)
    return CtPipeline.load().run([pydicom.dcmread(p) for p in series.files])


def test_peripheral_bilateral_ground_glass_is_typical(tmp_path: Path) -> None:
    base = _clean(31)
    balls = []
    for lung in (base.right_lung, base.left_lung):
        for posterior, height in ((0.75, -0.5), (0.3, -0.3), (0.8, 0.1), (0.2, 0.3)):
            centre = _at(lung, 0.55, posterior, height)
            balls.append(Ball(centre, 22.0, "ggo", pleural=True))  # type: ignore[arg-type]
    finding = _run(tmp_path, dataclasses.replace(base, balls=tuple(balls)))
    f = finding.assessment.features
    assert f.bilateral and f.ggo_share_percent > 90 and f.involvement_percent > 3
    assert f.peripheral_share_percent > f.peripheral_expected_percent + 10
    assert finding.assessment.category is CtCategory.TYPICAL, finding.assessment.reasons


def test_a_single_central_mass_is_atypical_and_not_involvement(tmp_path: Path) -> None:
    base = _clean(32)
    mass = Ball(_at(base.left_lung, 0.0, 0.0, 0.2), 16.0, "mass")  # type: ignore[arg-type]
    finding = _run(tmp_path, dataclasses.replace(base, balls=(mass,)))
    a = finding.assessment
    assert a.category is CtCategory.ATYPICAL, a.reasons
    assert a.features.focal_lesions == 1 == len(finding.focal_lesions)
    [lesion] = finding.focal_lesions
    assert lesion.lung == 2
    assert lesion.diameter_mm == pytest.approx(32.0, abs=8.0)
    assert lesion.volume_ml == pytest.approx(4 / 3 * 3.14159 * 16.0**3 / 1000, rel=0.35)
    assert a.features.involvement_percent < NEGATIVE_BELOW_PERCENT


def test_clean_lungs_are_negative(tmp_path: Path) -> None:
    finding = _run(tmp_path, _clean(33))
    assert finding.assessment.category is CtCategory.NEGATIVE, finding.assessment.reasons
    assert finding.focal_lesions == ()


def test_unilateral_central_ground_glass_is_indeterminate(tmp_path: Path) -> None:
    base = _clean(34)
    balls = tuple(
        Ball(_at(base.right_lung, lateral, 0.0, height), 18.0, "ggo")  # type: ignore[arg-type]
        for lateral, height in ((-0.1, 0.3), (0.05, -0.1))
    )
    finding = _run(tmp_path, dataclasses.replace(base, balls=balls))
    f = finding.assessment.features
    assert not f.bilateral and f.involvement_percent > NEGATIVE_BELOW_PERCENT
    assert finding.assessment.category is CtCategory.INDETERMINATE, finding.assessment.reasons


def test_consolidation_in_ground_glass_is_not_a_mass(tmp_path: Path) -> None:
    base = _clean(35)
    ball = Ball(_at(base.right_lung, 0.1, 0.2, -0.3), 15.0, "consolidation", halo=9.0)  # type: ignore[arg-type]
    finding = _run(tmp_path, dataclasses.replace(base, balls=(ball,)))
    assert finding.focal_lesions == ()
    assert finding.quantification.total.consolidation_ml > 5.0

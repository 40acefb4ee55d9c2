"""Lung segmentation against the phantom's truth, in several orientations."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from dicom_node.domain import LEFT_LUNG, RIGHT_LUNG
from dicom_node.pipelines.ct.lungs import LungSegmentation, segment_lungs
from dicom_node.pipelines.ct.series import CtVolume, assemble, check_series
from tests.support.synthetic import PhantomSeries, make_phantom, write_phantom_series
from tests.support.synthetic.phantom import AIRWAY, LEFT, RIGHT, Ellipsoid


def load(series: PhantomSeries) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in series.files]


def truth_masks(series: PhantomSeries, volume: CtVolume) -> tuple[np.ndarray, np.ndarray]:
    """Truth side map and airway mask in the volume's slice order (ascending z)."""
    phantom = series.phantom
    labels, side = phantom.render_labels(0, phantom.n_slices)
    order = np.argsort([phantom.slice_z(k) for k in range(phantom.n_slices)])
    lung = np.where(labels == AIRWAY, 0, side)[order]
    return lung, (labels == AIRWAY)[order]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def case(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[PhantomSeries, CtVolume, LungSegmentation]:
    series = write_phantom_series(tmp_path_factory.mktemp("lungs"), n_slices=48, size=128, seed=4)
    volume = assemble(check_series(load(series))[0])
    return series, volume, segment_lungs(volume)


def test_lungs_match_the_truth(case: tuple[PhantomSeries, CtVolume, LungSegmentation]) -> None:
    series, volume, seg = case
    lung, _ = truth_masks(series, volume)
    assert seg.notes == ()
    for code, truth_code, truth in (
        (RIGHT_LUNG, RIGHT, series.truth.right),
        (LEFT_LUNG, LEFT, series.truth.left),
    ):
        assert seg.volume_ml(volume.voxel_ml, code) == pytest.approx(truth.lung_ml, rel=0.015)
        assert dice(seg.labels == code, lung == truth_code) > 0.97


def test_dense_lesions_count_as_lung(
    case: tuple[PhantomSeries, CtVolume, LungSegmentation],
) -> None:
    series, _volume, seg = case
    phantom = series.phantom
    labels, _ = phantom.render_labels(0, phantom.n_slices)
    order = np.argsort([phantom.slice_z(k) for k in range(phantom.n_slices)])
    consolidation = (labels == 8)[order]
    inside = np.count_nonzero(consolidation & (seg.labels > 0)) / np.count_nonzero(consolidation)
    # Enclosed ones are filled as holes, subpleural ones by the costal closing (not where a
    # lesion replaces the pointed posterior tip of the phantom's elliptic lung: nothing to close).
    assert inside > 0.8


def test_airway_is_found_and_removed(
    case: tuple[PhantomSeries, CtVolume, LungSegmentation],
) -> None:
    series, volume, seg = case
    _, airway = truth_masks(series, volume)
    # Traced through every slice of trachea and bronchi (the lumen's blurred edge pixels are
    # above the -950 HU growth threshold; the one-voxel rim removes them from the lungs).
    with_airway = np.flatnonzero(airway.any(axis=(1, 2)))
    assert all(np.any(seg.airway[k] & airway[k]) for k in with_airway)
    assert np.count_nonzero(seg.airway & ~airway) < 0.05 * np.count_nonzero(seg.airway)
    assert np.count_nonzero((seg.labels > 0) & airway) < 0.05 * np.count_nonzero(airway)


def _mirror_columns(datasets: list[Dataset]) -> list[Dataset]:
    out = []
    for ds in datasets:
        ds = copy.deepcopy(ds)
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + (ds.Columns - 1) * float(ds.PixelSpacing[1]), y, z]
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
        out.append(ds)
    return out


def _flip_rows(datasets: list[Dataset]) -> list[Dataset]:
    """Column direction anterior: the slice normal points to the feet."""
    out = []
    for ds in datasets:
        ds = copy.deepcopy(ds)
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1, :]).tobytes()
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + (ds.Rows - 1) * float(ds.PixelSpacing[0]), z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, -1, 0]
        out.append(ds)
    return out


@pytest.mark.parametrize("transform", [_mirror_columns, _flip_rows])
def test_sides_follow_patient_coordinates_not_image_layout(
    case: tuple[PhantomSeries, CtVolume, LungSegmentation], transform: object
) -> None:
    series, volume, seg = case
    moved = assemble(check_series(transform(load(series)))[0])  # type: ignore[operator]
    moved_seg = segment_lungs(moved)
    for code in (RIGHT_LUNG, LEFT_LUNG):
        expected = seg.volume_ml(volume.voxel_ml, code)
        assert moved_seg.volume_ml(moved.voxel_ml, code) == pytest.approx(expected, rel=0.01)
    assert not any("trachea not found" in note for note in moved_seg.notes)


def test_lungs_touching_at_the_midline_are_split(tmp_path: Path) -> None:
    base = make_phantom(size=128, n_slices=48, seed=6)
    shift = 0.075 * 340.0  # moves each lung's medial edge across the midline

    def moved(lung: Ellipsoid, dx: float) -> Ellipsoid:
        x, y, z = lung.center
        return Ellipsoid((x + dx, y, z), lung.semi_axes)

    phantom = dataclasses.replace(
        base, right_lung=moved(base.right_lung, shift), left_lung=moved(base.left_lung, -shift)
    )
    series = write_phantom_series(tmp_path, phantom=phantom)
    volume = assemble(check_series(load(series))[0])
    seg = segment_lungs(volume)
    assert any("split at the mid-sagittal plane" in note for note in seg.notes)
    total = seg.volume_ml(volume.voxel_ml)
    assert total == pytest.approx(series.truth.total.lung_ml, rel=0.03)
    for code in (RIGHT_LUNG, LEFT_LUNG):
        assert 0.35 * total < seg.volume_ml(volume.voxel_ml, code) < 0.65 * total


def test_a_volume_without_lungs_gives_no_lung(tmp_path: Path) -> None:
    base = make_phantom(size=128, n_slices=48, seed=7, n_ggo=0, n_consolidation=0, n_pleural=0)
    tiny = Ellipsoid((0.0, 0.0, -200.0), (1.0, 1.0, 1.0))
    phantom = dataclasses.replace(base, right_lung=tiny, left_lung=tiny, airway=(), vessels=())
    series = write_phantom_series(tmp_path, phantom=phantom)
    volume = assemble(check_series(load(series))[0])
    assert segment_lungs(volume).volume_ml(volume.voxel_ml) < 50

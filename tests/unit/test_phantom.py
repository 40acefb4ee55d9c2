"""The synthetic chest CT phantom: truth, geometry and the DICOM it writes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.support.synthetic import PhantomSeries, make_phantom, write_phantom_series
from tests.support.synthetic.phantom import AIRWAY, CONSOLIDATION, GGO, LEFT, RIGHT, VESSEL


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> PhantomSeries:
    return write_phantom_series(tmp_path_factory.mktemp("phantom"), n_slices=40, size=96, seed=3)


def test_truth_matches_the_analytic_shapes() -> None:
    phantom = make_phantom(size=128, n_slices=48, seed=0, n_ggo=0, n_consolidation=0, n_pleural=0)
    truth = phantom.truth()
    for lung, measured in ((phantom.right_lung, truth.right), (phantom.left_lung, truth.left)):
        a, b, c = lung.semi_axes
        ellipsoid_ml = 4 / 3 * math.pi * a * b * c / 1000
        # Voxelised ellipsoid minus the bronchus lumen inside it: within a few percent.
        assert measured.lung_ml == pytest.approx(ellipsoid_ml, rel=0.05)
        assert measured.lesion_ml == 0


def test_lesions_have_known_volume_and_some_cross_the_pleura() -> None:
    phantom = make_phantom(size=128, n_slices=48, seed=1)
    truth = phantom.truth()
    balls = phantom.balls
    assert {b.kind for b in balls} == {"ggo", "consolidation"}
    assert sum(b.pleural for b in balls) >= 2
    full = sum(4 / 3 * math.pi * b.outer_radius**3 for b in balls) / 1000
    # Subpleural balls are clipped to the lung, so the truth is below the full balls' volume.
    assert 0.5 * full < truth.total.lesion_ml < full
    labels, side = phantom.render_labels(0, phantom.n_slices)
    lesion = np.isin(labels, (GGO, CONSOLIDATION))
    assert np.all(side[lesion] > 0), "lesions lie inside the lungs"
    assert np.count_nonzero(labels == VESSEL) > 0
    assert np.count_nonzero((labels == AIRWAY) & (side > 0)) > 0, "bronchi open into the lungs"


def test_right_lung_is_on_the_patient_right(series: PhantomSeries) -> None:
    phantom = series.phantom
    _, side = phantom.render_labels(phantom.n_slices // 2, phantom.n_slices // 2 + 1)
    x0, _ = phantom.origin_xy
    cols = np.nonzero(side[0] == RIGHT)[1]
    # DICOM patient +x is the patient's left: the right lung has negative x.
    assert np.all(x0 + cols * phantom.pixel_spacing < 0)
    assert np.all(x0 + np.nonzero(side[0] == LEFT)[1] * phantom.pixel_spacing > 0)


def test_series_geometry_and_hounsfield_units(series: PhantomSeries) -> None:
    datasets = [pydicom.dcmread(path) for path in series.files]
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert {ds.StudyInstanceUID for ds in datasets} == {series.study_instance_uid}
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in datasets])
    numbers = np.array([int(ds.InstanceNumber) for ds in datasets])
    steps = np.diff(np.sort(z))
    assert np.allclose(steps, series.phantom.slice_spacing, atol=1e-3)
    # Instance numbers are shuffled relative to position on purpose.
    assert not np.array_equal(np.argsort(numbers), np.argsort(z))
    assert not np.array_equal(np.argsort(numbers), np.argsort(-z))
    ds = datasets[0]
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert hu.min() >= -1024
    # Air outside the body and soft tissue inside it.
    assert hu[0, 0] < -900
    assert abs(np.median(hu[ds.Rows // 2 - 2 : ds.Rows // 2 + 2, 2 : ds.Columns // 8])) < 300


def test_signed_pixels_give_the_same_hounsfield_units(tmp_path: Path) -> None:
    a = write_phantom_series(tmp_path / "u", n_slices=24, size=64, seed=5)
    b = write_phantom_series(tmp_path / "s", n_slices=24, size=64, seed=5, signed_pixels=True)
    da, db = pydicom.dcmread(a.files[7]), pydicom.dcmread(b.files[7])
    hu_a = da.pixel_array * float(da.RescaleSlope) + float(da.RescaleIntercept)
    hu_b = db.pixel_array * float(db.RescaleSlope) + float(db.RescaleIntercept)
    assert da.PixelRepresentation == 0 and db.PixelRepresentation == 1
    np.testing.assert_array_equal(hu_a, hu_b)


def test_same_arguments_write_the_same_series(tmp_path: Path) -> None:
    a = write_phantom_series(tmp_path / "a", n_slices=24, size=64, seed=9)
    b = write_phantom_series(tmp_path / "b", n_slices=24, size=64, seed=9)
    c = write_phantom_series(tmp_path / "c", n_slices=24, size=64, seed=10)
    assert a.series_instance_uid == b.series_instance_uid != c.series_instance_uid
    assert a.files[3].read_bytes() == b.files[3].read_bytes()
    assert a.truth == b.truth

"""CT series selection, geometry checks and HU assembly."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import RLELossless, generate_uid

from dicom_node.errors import PipelineError
from dicom_node.pipelines.ct.series import assemble, check_series, select_series
from dicom_node.pixels import hu_image, stored_pixels
from tests.support.synthetic import write_phantom_series
from tests.support.synthetic.writer import PATIENT_ID, PATIENT_NAME


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    series = write_phantom_series(tmp_path_factory.mktemp("ct"), n_slices=40, size=64, seed=2)
    return [pydicom.dcmread(path) for path in series.files]


def fresh(slices: list[Dataset]) -> list[Dataset]:
    return [copy.deepcopy(ds) for ds in slices]


def as_series(datasets: list[Dataset], **changes: object) -> list[Dataset]:
    """The datasets as a new series (new UIDs), with attributes changed on every slice."""
    uid = generate_uid()
    out = []
    for ds in datasets:
        ds = copy.deepcopy(ds)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        out.append(ds)
    return out


def z_of(ds: Dataset) -> float:
    return float(ds.ImagePositionPatient[2])


def test_slices_are_sorted_by_position_not_instance_number(slices: list[Dataset]) -> None:
    ordered, spacing = check_series(slices)
    z = [z_of(ds) for ds in ordered]
    assert z == sorted(z)  # ascending along the normal (+z for axial)
    assert spacing == pytest.approx(300.0 / 40, abs=1e-3)
    numbers = [int(ds.InstanceNumber) for ds in ordered]
    assert numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)


def test_volume_holds_hounsfield_units_in_slice_order(slices: list[Dataset]) -> None:
    volume = assemble(check_series(slices)[0])
    assert volume.hu.dtype == np.int16
    assert volume.step == 1  # 340 mm / 64 px: already coarser than the working grid
    for k in (0, 17, 39):
        ds = volume.datasets[k]
        expected = ds.pixel_array.astype(np.int32) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume.hu[k], expected)
    np.testing.assert_allclose(volume.positions[:, 2], sorted(z_of(ds) for ds in slices))


def test_working_grid_subsamples_in_plane(slices: list[Dataset]) -> None:
    ordered = check_series(slices)[0]
    full = assemble(ordered)
    coarse = assemble(ordered, working_spacing_mm=3 * full.pixel_spacing[0])
    assert coarse.step == 3
    np.testing.assert_array_equal(coarse.hu, full.hu[:, ::3, ::3])
    assert coarse.voxel_ml == pytest.approx(9 * full.voxel_ml)


def test_rescale_slope_and_intercept_are_applied(slices: list[Dataset]) -> None:
    ds = copy.deepcopy(slices[5])
    reference = hu_image(ds)
    raw = ds.pixel_array.astype(np.uint16)
    ds.RescaleSlope, ds.RescaleIntercept = 0.5, -1024
    ds.BitsStored, ds.HighBit = 16, 15
    ds.PixelData = (raw * 2).astype("<u2").tobytes()
    np.testing.assert_array_equal(hu_image(ds), reference)


def test_stored_bits_above_bits_stored_are_ignored(slices: list[Dataset]) -> None:
    ds = copy.deepcopy(slices[5])
    reference = hu_image(ds)
    raw = ds.pixel_array.astype(np.uint16)
    ds.PixelData = (raw | 0xF000).astype("<u2").tobytes()  # junk in bits 12-15 (BitsStored 12)
    np.testing.assert_array_equal(hu_image(ds), reference)


def test_compressed_pixel_data_is_decoded(slices: list[Dataset]) -> None:
    ds = copy.deepcopy(slices[5])
    reference = stored_pixels(ds).copy()
    ds.compress(RLELossless)
    np.testing.assert_array_equal(stored_pixels(ds), reference)


def test_the_volume_series_is_chosen_over_a_single_slice_and_derived(
    slices: list[Dataset],
) -> None:
    localizer = as_series(slices[:1], SeriesNumber=1)  # routing drops real localizers before
    derived = as_series(slices, ImageType=["DERIVED", "SECONDARY", "AXIAL"], SeriesNumber=3)
    volume = as_series(slices, SeriesNumber=2)
    choice = select_series([*localizer, *derived, *volume])
    assert {ds.SeriesInstanceUID for ds in choice.datasets} == {volume[0].SeriesInstanceUID}
    assert any("series 1" in note and "single slice" in note for note in choice.notes)
    assert any("series 3" in note and "preferred" in note for note in choice.notes)


def test_more_slices_win_among_primary_series(slices: list[Dataset]) -> None:
    thick = as_series(slices[:30], SeriesNumber=3)
    thin = as_series(slices, SeriesNumber=4)
    choice = select_series([*thick, *thin])
    assert choice.datasets[0].SeriesNumber == 4


def _drop_middle(d: list[Dataset]) -> list[Dataset]:
    ordered = sorted(d, key=z_of)
    return ordered[:20] + ordered[21:]


def _duplicate(d: list[Dataset]) -> list[Dataset]:
    extra = copy.deepcopy(d[3])
    extra.SOPInstanceUID = generate_uid()
    return [*d, extra]


def _one_tilted(d: list[Dataset]) -> list[Dataset]:
    d = fresh(d)
    d[4].ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.43589]
    return d


def _irregular(d: list[Dataset]) -> list[Dataset]:
    d = sorted(fresh(d), key=z_of)
    for i, ds in enumerate(d):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + (1.5 if i % 2 else 0.0)]
    return d


CASES: dict[str, tuple[Callable[[list[Dataset]], list[Dataset]], str]] = {
    "single slice": (lambda d: d[:1], "single slice is not a volume"),
    "too few slices": (lambda d: d[:10], "too few slices"),
    "gap": (_drop_middle, "gap of"),
    "coronal": (lambda d: as_series(d, ImageOrientationPatient=[1, 0, 0, 0, 0, -1]), "not axial"),
    "sagittal": (lambda d: as_series(d, ImageOrientationPatient=[0, 1, 0, 0, 0, -1]), "sagittal"),
    "mixed orientation": (_one_tilted, "different orientations"),
    "duplicate position": (_duplicate, "share a position"),
    "irregular spacing": (_irregular, "irregular slice spacing"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unusable_series_are_rejected_with_a_reason(slices: list[Dataset], case: str) -> None:
    make, reason = CASES[case]
    with pytest.raises(PipelineError) as info:
        select_series(make(slices))
    message = str(info.value)
    assert message.startswith("no analysable CT series")
    assert reason in message
    for part in (*str(PATIENT_NAME).split("^"), PATIENT_ID):
        assert part not in message


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("ImagePositionPatient", ["nan", "0", "0"]),
        ("ImageOrientationPatient", [1, 0, 0, 0, 1]),
        ("PixelSpacing", [0, 0]),
    ],
)
def test_broken_geometry_is_refused_naming_the_slice_and_attribute(
    slices: list[Dataset], keyword: str, value: object
) -> None:
    datasets = fresh(slices)
    broken = datasets[7]
    setattr(broken, keyword, value)
    with pytest.raises(PipelineError) as refused:
        check_series(datasets)
    message = str(refused.value)
    assert keyword in message and str(broken.SOPInstanceUID) in message


def test_undecodable_pixels_name_the_slice(slices: list[Dataset]) -> None:
    datasets = fresh(slices)
    ordered, _ = check_series(datasets)
    ordered[3].BitsAllocated = 12  # native data that no decoder can unpack
    with pytest.raises(PipelineError, match=f"slice {ordered[3].SOPInstanceUID}: pixel data"):
        assemble(ordered)

"""The CT pipeline end to end on a phantom, through the registry like the node loads it.

The outputs (SR, SEG, key-image and coronal-overview SCs) are checked for content, references
and determinism (``dciodvfy`` conformance: ``tests/integration``).
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from dicom_node.domain import CtFinding, OutputContext
from dicom_node.errors import NotAnalysable
from dicom_node.outputs.codes import CT_CATEGORY_VALUES
from dicom_node.outputs.seg import label_map, upsample
from dicom_node.pipelines.ct.pipeline import CtPipeline, key_slices
from dicom_node.registry import LoadedPipeline, PipelineRegistry
from tests.support.readers import read_ct_assessment, read_ct_report
from tests.support.synthetic import PhantomSeries, make_phantom, write_phantom_series
from tests.support.synthetic.phantom import Ellipsoid

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedPipeline:
    # An empty models directory: the CT assessment needs no model file.
    return PipelineRegistry(tmp_path_factory.mktemp("models")).get("ct")


@pytest.fixture(scope="module")
def pipeline(loaded: LoadedPipeline) -> CtPipeline:
    assert isinstance(loaded.pipeline, CtPipeline)
    return loaded.pipeline


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> PhantomSeries:
    return write_phantom_series(tmp_path_factory.mktemp("ct"), n_slices=48, size=128, seed=11)


@pytest.fixture(scope="module")
def sources(phantom: PhantomSeries) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in phantom.files]


@pytest.fixture(scope="module")
def finding(pipeline: CtPipeline, sources: list[Dataset]) -> CtFinding:
    return pipeline.run(sources)


@pytest.fixture(scope="module")
def outputs(loaded: LoadedPipeline, finding: CtFinding, sources: list[Dataset]) -> list[Dataset]:
    return loaded.build_outputs(finding, sources, OutputContext())


def test_summary_has_the_classify_fields(
    pipeline: CtPipeline, finding: CtFinding, phantom: PhantomSeries
) -> None:
    summary = pipeline.summarise(finding)
    json.dumps(summary)  # JSON-able for the job log and classify --json
    for key in (
        "ct_category",
        "features",
        "reasons",
        "involvement_percent",
        "lung_volume_ml",
        "lesion_volume_ml",
        "severity_score",
    ):
        assert key in summary
    assert summary["ct_category"] == summary["label"] == finding.assessment.category.value
    assert summary["features"]["involvement_percent"] == pytest.approx(
        summary["involvement_percent"], abs=0.01
    )
    assert summary["pipeline"] == "ct"
    assert summary["right_lung"]["lung_volume_ml"] + summary["left_lung"]["lung_volume_ml"] == (
        pytest.approx(summary["lung_volume_ml"], abs=0.2)
    )
    truth = phantom.truth.total
    assert abs(summary["involvement_percent"] - truth.involvement_percent) <= 2.0
    assert summary["severity_score"] == sum(r["score"] for r in summary["severity_regions"])
    assert len(summary["severity_regions"]) == 5


def test_key_slices_take_the_largest_lesion_burden_apart() -> None:
    lungs = np.ones((50, 4, 4), dtype=np.uint8)
    lesions = np.zeros_like(lungs)
    lesions[20, :3] = 1  # 12 pixels
    lesions[21, :2] = 1  # 8, but next to 20
    lesions[35, :2] = 2  # 8
    lesions[5, :1] = 1  # 4
    assert key_slices(lungs, lesions, slice_spacing=5.0) == (5, 20, 35)


def test_outputs_are_sr_seg_and_key_images_in_new_series(
    outputs: list[Dataset], sources: list[Dataset], finding: CtFinding
) -> None:
    sr, seg, *scs = outputs
    assert sr.SOPClassUID == SR_CLASS and seg.SOPClassUID == SEG_CLASS
    # The key images, then the coronal overview.
    assert [sc.SOPClassUID for sc in scs] == [SC_CLASS] * (len(finding.key_slices) + 1)
    assert len(finding.key_slices) == 3
    source_series = sources[0].SeriesInstanceUID
    series = {sr.SeriesInstanceUID, seg.SeriesInstanceUID, scs[0].SeriesInstanceUID}
    assert len(series) == 3 and source_series not in series
    assert len({sc.SeriesInstanceUID for sc in scs}) == 1
    for ds in outputs:
        assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
        assert ds.PatientID == sources[0].PatientID
        assert "NOT FOR CLINICAL USE" in ds.SeriesDescription
        assert ds.SeriesDate and ds.SeriesTime
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.CompletionFlag == "COMPLETE"


def test_sr_carries_the_measurements(
    outputs: list[Dataset], finding: CtFinding, pipeline: CtPipeline
) -> None:
    report = read_ct_report(outputs[0])
    q = finding.quantification
    study = report["CT COVID-19 assessment (AI, unverified)"]
    features = finding.assessment.features
    evaluations = read_ct_assessment(outputs[0])
    category = CT_CATEGORY_VALUES[finding.assessment.category.value].meaning
    assert evaluations["RSNA COVID-19 CT category"] == category
    assert evaluations["Bilateral involvement"] == ("Yes" if features.bilateral else "No")
    assert study["Lesion share in the outer third of the lung"] == pytest.approx(
        features.peripheral_share_percent, abs=0.01
    )
    assert study["GGO/consolidation foci of 1 mL or more"] == features.foci
    assert study["Compact solid lesions (nodule or mass), not counted"] == features.focal_lesions
    assert study["CT severity score 0-25 (zones approximating lobes)"] == q.severity_score
    assert study["Lung volume"] == pytest.approx(q.total.lung_ml, abs=0.01)
    assert study["Lesion volume (GGO and consolidation)"] == pytest.approx(
        q.total.lesion_ml, abs=0.01
    )
    involvement = study["Lung involvement (lesion volume / lung volume)"]
    assert involvement == pytest.approx(q.total.involvement_percent, abs=0.01)
    right = report["Right lung (AI, unverified)"]
    assert right["Lung volume"] == pytest.approx(q.right.lung_ml, abs=0.01)
    zones = [name for name in report if "zone" in name]
    assert len(zones) == 5 and all("approx." in name for name in zones)
    assert report["Ground-glass opacity (AI, unverified)"]["Volume"] == pytest.approx(
        q.total.ggo_ml, abs=0.01
    )
    content: hd.sr.MeasurementReport = hd.sr.Comprehensive3DSR.from_dataset(outputs[0]).content  # type: ignore[assignment]
    algorithm_names = {
        str(item.TextValue)
        for group in content.get_image_measurement_groups()
        for item in group[0].ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "111001"  # Algorithm Name
    }
    assert algorithm_names == {pipeline.model_info.name}


def test_seg_frames_reference_their_slices_and_hold_the_masks(
    outputs: list[Dataset], finding: CtFinding, sources: list[Dataset]
) -> None:
    seg = hd.seg.Segmentation.from_dataset(outputs[1])
    assert seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [
        "Right lung without lesions",
        "Left lung without lesions",
        "Ground-glass opacity",
        "Consolidation",
    ]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    index = {uid: k for k, uid in enumerate(finding.source_sop_instance_uids)}
    shape = (int(sources[0].Rows), int(sources[0].Columns))
    expected = upsample(label_map(finding.lungs, finding.lesions), finding.step, shape)
    frames = seg.pixel_array
    per_segment: defaultdict[int, int] = defaultdict(int)
    for number, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        uid = str(reference.ReferencedSOPInstanceUID)
        assert uid in by_uid
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, by_uid[uid].ImagePositionPatient, atol=1e-3)
        np.testing.assert_array_equal(frames[number] > 0, expected[index[uid]] == segment)
        per_segment[segment] += int(np.count_nonzero(frames[number]))
    voxel_ml = finding.quantification.total.lung_ml / np.count_nonzero(finding.lungs)
    ggo_ml = per_segment[3] * voxel_ml / finding.step**2
    assert ggo_ml == pytest.approx(finding.quantification.total.ggo_ml, rel=1e-6)


def test_coronal_overview_outlines_the_lungs(outputs: list[Dataset], finding: CtFinding) -> None:
    overview = outputs[-1]
    pixels = overview.pixel_array
    assert list(overview.PatientOrientation) == ["L", "F"]
    cyan = (pixels[..., 0] < 40) & (pixels[..., 1] > 215) & (pixels[..., 2] > 215)
    assert np.count_nonzero(cyan) > 200
    # True aspect: 48 slices of 6.25 mm (300 mm) against 128 columns of 2.66 mm (340 mm).
    assert pixels.shape[0] / pixels.shape[1] == pytest.approx(300 / 340, rel=0.05)


def test_key_images_show_tinted_lesions(outputs: list[Dataset], finding: CtFinding) -> None:
    for sc in outputs[2:-1]:
        pixels = sc.pixel_array
        assert pixels.ndim == 3 and pixels.shape[2] == 3
        assert min(pixels.shape[:2]) >= 512  # small matrices enlarged for the burned-in text
        assert sc.BurnedInAnnotation == "YES"
        assert list(sc.PatientOrientation) == ["L", "P"]
        red, green, blue = (pixels[..., c].astype(int) for c in range(3))
        tinted = (red - blue > 60) & (np.abs(red - green) < 200)
        assert np.count_nonzero(tinted) > 50


def test_rerunning_gives_the_same_uids(
    loaded: LoadedPipeline, finding: CtFinding, sources: list[Dataset], outputs: list[Dataset]
) -> None:
    again = loaded.build_outputs(finding, sources, OutputContext())
    assert [ds.SOPInstanceUID for ds in again] == [ds.SOPInstanceUID for ds in outputs]
    assert [ds.SeriesInstanceUID for ds in again] == [ds.SeriesInstanceUID for ds in outputs]


def test_tcia_single_slices_are_reported_as_not_a_volume(
    pipeline: CtPipeline, shared_data: Path
) -> None:
    studies: defaultdict[str, list[Dataset]] = defaultdict(list)
    for path in sorted((shared_data / "ct_dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        studies[str(ds.StudyInstanceUID)].append(ds)
    for datasets in studies.values():
        with pytest.raises(NotAnalysable, match="single slice is not a volume"):
            pipeline.run(datasets)


def test_a_ct_without_lungs_is_not_analysed(pipeline: CtPipeline, tmp_path: Path) -> None:
    base = make_phantom(size=128, n_slices=48, seed=12)
    tiny = Ellipsoid((0.0, 0.0, -200.0), (1.0, 1.0, 1.0))
    phantom = dataclasses.replace(base, right_lung=tiny, left_lung=tiny, balls=(), vessels=())
    series = write_phantom_series(tmp_path, phantom=phantom)
    with pytest.raises(NotAnalysable, match="no lungs found"):
        pipeline.run([pydicom.dcmread(p) for p in series.files])

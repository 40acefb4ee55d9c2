"""X-ray SR and SC built from a finding on the real chest CR: content (dciodvfy: integration)."""

from __future__ import annotations

from dataclasses import replace

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset

from dicom_node.domain import ModelInfo, OutputContext, XrayFinding
from dicom_node.outputs import render
from dicom_node.outputs.codes import SEVERITY_LEVEL
from dicom_node.outputs.common import UNFINISHED_DESCRIPTION, UNFINISHED_NOTICE
from dicom_node.outputs.render import HOT_REGION_COLOUR, LUNG_OUTLINE_COLOUR
from dicom_node.outputs.xray import (
    CERTAINTY_OF_FINDING,
    SUSPECTED,
    build_xray_outputs,
    label_text,
    severity_text,
)
from tests.support.factories import SYNTHETIC_SEVERITY, chest_cr, synthetic_xray_finding
from tests.support.readers import read_xray_report

MODEL = ModelInfo("xray_test", "9.9.9", ("covid", "normal", "pneumonia_bac"))


@pytest.fixture(scope="module")
def source() -> Dataset:
    return chest_cr()


@pytest.fixture(scope="module")
def outputs(source: Dataset) -> list[Dataset]:
    return build_xray_outputs(synthetic_xray_finding(source), [source], OutputContext(), MODEL)


def test_one_sr_and_one_sc_per_image_in_the_source_study(
    source: Dataset, outputs: list[Dataset]
) -> None:
    sr, sc = outputs
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    for ds in outputs:
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientID == source.PatientID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert "NOT FOR CLINICAL USE" in ds.SeriesDescription
        assert ds.SeriesDate and ds.SeriesTime
        assert ds.ContentQualification == "RESEARCH"
    assert sr.SeriesInstanceUID != sc.SeriesInstanceUID


def test_sr_content_reads_back(source: Dataset, outputs: list[Dataset]) -> None:
    sr = outputs[0]
    assert sr.VerificationFlag == "UNVERIFIED"
    [image] = read_xray_report(sr)
    assert image.source_sop_instance_uid == source.SOPInstanceUID
    assert image.label == "covid"
    assert image.probabilities == pytest.approx(
        {"covid": 0.8, "normal": 0.15, "pneumonia_bac": 0.05}
    )
    assert image.region_type == "POLYLINE" and image.region_points == 5
    assert image.algorithm == MODEL.name
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_sc_has_heatmap_and_burned_in_notice(source: Dataset, outputs: list[Dataset]) -> None:
    sc = outputs[1]
    assert sc.BurnedInAnnotation == "YES"
    assert sc.PhotometricInterpretation == "RGB"
    pixels = sc.pixel_array
    assert max(pixels.shape[:2]) == 1024
    # Coloured (heatmap) pixels exist, and the text boxes darken the corners.
    colourful = np.abs(pixels[..., 0].astype(int) - pixels[..., 2].astype(int)) > 40
    assert colourful.mean() > 0.01
    assert pixels[-5:, :50].mean() < 60


def test_uids_are_deterministic_and_versioned(source: Dataset, outputs: list[Dataset]) -> None:
    again = build_xray_outputs(synthetic_xray_finding(source), [source], OutputContext(), MODEL)
    assert [d.SOPInstanceUID for d in again] == [d.SOPInstanceUID for d in outputs]
    newer = ModelInfo(MODEL.name, "10.0.0", MODEL.classes)
    other = build_xray_outputs(synthetic_xray_finding(source), [source], OutputContext(), newer)
    assert not {d.SOPInstanceUID for d in other} & {d.SOPInstanceUID for d in outputs}


def test_finding_for_a_foreign_instance_is_refused(source: Dataset) -> None:
    stranger = chest_cr(new_uids=True)
    with pytest.raises(ValueError, match="not among the sources"):
        build_xray_outputs(synthetic_xray_finding(stranger), [source], OutputContext(), MODEL)


def _with_lungs(source: Dataset, **changes: object) -> XrayFinding:
    """The synthetic finding with two rectangular lung fields (and any other changes)."""
    [image] = synthetic_xray_finding(source).images
    rows, cols = image.heatmap.shape
    mask = np.zeros((rows, cols), bool)
    outlines = []
    for c0, c1 in ((cols * 0.15, cols * 0.45), (cols * 0.55, cols * 0.85)):
        r0, r1 = rows * 0.2, rows * 0.75
        mask[int(r0) : int(r1), int(c0) : int(c1)] = True
        outlines.append(np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]]))
    lungs = replace(
        image,
        lung_mask=mask,
        lung_outline=tuple(outlines),
        lung_box=(int(rows * 0.2), int(rows * 0.75), int(cols * 0.15), int(cols * 0.85)),
        heat_in_lungs=0.7,
    )
    return XrayFinding((replace(lungs, **changes),))  # type: ignore[arg-type]


def test_sc_outlines_the_lung_fields_in_their_own_colour(source: Dataset) -> None:
    plain = build_xray_outputs(synthetic_xray_finding(source), [source], OutputContext(), MODEL)
    lungs = build_xray_outputs(_with_lungs(source), [source], OutputContext(), MODEL)
    for outputs, expected in ((plain, False), (lungs, True)):
        pixels = outputs[1].pixel_array.reshape(-1, 3)
        cyan = (pixels == np.array(LUNG_OUTLINE_COLOUR)).all(axis=1).sum()
        yellow = (pixels == np.array(HOT_REGION_COLOUR)).all(axis=1).sum()
        assert (cyan > 500) == expected and yellow > 100


def test_a_triage_label_is_called_a_suspicion(source: Dataset) -> None:
    # COVID-19 chosen by the triage weights although Normal is more probable.
    probabilities = {"covid": 0.31, "normal": 0.62, "pneumonia_bac": 0.07}
    finding = _with_lungs(source, probabilities=probabilities, triage_suspicion=True)
    [image] = finding.images
    assert label_text(image) == "COVID-19 suspected (triage threshold; p=0.31, top: Normal 0.62)"
    sr, _ = build_xray_outputs(finding, [source], OutputContext(), MODEL)
    [read] = read_xray_report(sr)
    assert read.label == "covid"  # the finding's code is the class's, unchanged
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    [group] = report.content.get_planar_roi_measurement_groups()
    assert "suspected (triage threshold" in str(group.tracking_identifier)
    [certainty] = group.get_qualitative_evaluations(name=CERTAINTY_OF_FINDING)
    assert certainty.value == SUSPECTED
    confident = build_xray_outputs(_with_lungs(source), [source], OutputContext(), MODEL)[0]
    report = hd.sr.Comprehensive3DSR.from_dataset(confident)
    [group] = report.content.get_planar_roi_measurement_groups()
    assert "suspected" not in str(group.tracking_identifier)
    assert not group.get_qualitative_evaluations(name=CERTAINTY_OF_FINDING)


def test_sr_region_is_the_hot_region(source: Dataset) -> None:
    finding = _with_lungs(source)
    sr, _ = build_xray_outputs(finding, [source], OutputContext(), MODEL)
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    [group] = report.content.get_planar_roi_measurement_groups()
    points = np.asarray(group.roi.value).reshape(-1, 2)
    np.testing.assert_allclose(points, finding.images[0].hot_region, atol=1e-3)


def test_severity_scores_and_level_are_in_the_sr_and_on_the_sc(
    source: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    captured: list[str] = []
    real = render.burn_in_text

    def capture(rgb: np.ndarray, top: list[str], bottom: list[str]) -> np.ndarray:
        captured.extend(top + bottom)
        return real(rgb, top, bottom)

    monkeypatch.setattr(render, "burn_in_text", capture)
    sr, _ = build_xray_outputs(synthetic_xray_finding(source), [source], OutputContext(), MODEL)
    assert severity_text(SYNTHETIC_SEVERITY) in captured
    assert "level 2 moderate (extent 3.4/8, opacity 2.1/6)" in severity_text(SYNTHETIC_SEVERITY)
    [read] = read_xray_report(sr)
    assert read.geographic_extent == pytest.approx(SYNTHETIC_SEVERITY.geographic_extent)
    assert read.opacity == pytest.approx(SYNTHETIC_SEVERITY.opacity)
    assert read.severity_level == SYNTHETIC_SEVERITY.level
    assert set(read.probabilities) == set(MODEL.classes)  # the scores are no probabilities
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    [group] = report.content.get_planar_roi_measurement_groups()
    units = {str(m.name.meaning): m.unit.value for m in group.get_measurements()}
    assert units["Geographic extent score 0-8"] == units["Opacity score 0-6"] == "{score}"
    [level] = group.get_qualitative_evaluations(name=SEVERITY_LEVEL)
    assert level.value.meaning == "Level 2: moderate"
    # Without a severity model: no scores, no level, no severity line.
    captured.clear()
    bare = synthetic_xray_finding(source, severity=None)
    sr_bare, _ = build_xray_outputs(bare, [source], OutputContext(), MODEL)
    [read] = read_xray_report(sr_bare)
    assert read.geographic_extent is None and read.severity_level is None
    assert not any(line.startswith("Severity") for line in captured)


def test_an_unfinished_study_says_so_in_the_sr_and_on_the_sc(
    source: Dataset, outputs: list[Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    captured: list[str] = []
    real = render.burn_in_text

    def capture(rgb: np.ndarray, top: list[str], bottom: list[str]) -> np.ndarray:
        captured.extend(top + bottom)
        return real(rgb, top, bottom)

    monkeypatch.setattr(render, "burn_in_text", capture)
    finding = synthetic_xray_finding(source)
    sr, sc = build_xray_outputs(finding, [source], OutputContext(unfinished=True), MODEL)
    assert sr.CompletionFlag == "PARTIAL"
    assert sr.CompletionFlagDescription == UNFINISHED_DESCRIPTION
    for ds in (sr, sc):
        assert "UNFINISHED NOT FOR CLINICAL USE" in ds.SeriesDescription
    assert captured[0] == UNFINISHED_NOTICE  # the first line burned in
    [image] = read_xray_report(sr)  # the finding itself is reported as usual
    assert image.label == "covid"
    finished_sr, finished_sc = outputs
    assert finished_sr.CompletionFlag == "COMPLETE"
    assert "CompletionFlagDescription" not in finished_sr
    assert "UNFINISHED" not in finished_sr.SeriesDescription
    assert not np.array_equal(sc.pixel_array, finished_sc.pixel_array)

"""X-ray SR and SC built from a finding on the real chest CR: content (dciodvfy: integration)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import Dataset

from dicom_node.domain import ModelInfo, OutputContext
from dicom_node.outputs.readers import read_xray_report
from dicom_node.outputs.xray import build_xray_outputs
from tests.support.factories import chest_cr, synthetic_xray_finding

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

"""Anonymised sources (Type 2 attributes absent) still get full results (issue 9, defect 2)."""

from __future__ import annotations

from pathlib import Path

import pydicom

from dicom_node.domain import ModelInfo, OutputContext
from dicom_node.outputs.ct import build_ct_outputs
from dicom_node.outputs.xray import build_xray_outputs
from dicom_node.pipelines.ct.pipeline import CtPipeline
from tests.support.factories import chest_cr, synthetic_xray_finding
from tests.support.mutations import TYPE2_ATTRIBUTES
from tests.support.synthetic import write_phantom_series

TYPE2 = ("PatientName", "PatientID", *TYPE2_ATTRIBUTES)
MODEL = ModelInfo(name="test_model", version="0.0.1", classes=("covid", "normal", "pneumonia_bac"))


def strip(ds: pydicom.Dataset) -> pydicom.Dataset:
    for keyword in TYPE2:
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def test_an_anonymised_radiograph_gets_its_sr_and_sc() -> None:
    source = strip(chest_cr(new_uids=True))
    outputs = build_xray_outputs(synthetic_xray_finding(source), [source], OutputContext(), MODEL)
    assert [ds.Modality for ds in outputs] == ["SR", "OT"]
    for ds in outputs:
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        for keyword in ("PatientName", "PatientID", "AccessionNumber", "StudyID"):
            assert keyword in ds and not ds.get(keyword)  # present, empty (Type 2)
    assert all(keyword not in source for keyword in TYPE2)  # the source is not changed


def test_an_anonymised_ct_series_gets_its_sr_seg_and_key_images(tmp_path: Path) -> None:
    series = write_phantom_series(tmp_path, n_slices=40, size=96, seed=3)
    sources = [strip(pydicom.dcmread(path)) for path in series.files]
    pipeline = CtPipeline()
    finding = pipeline.run(sources)
    outputs = build_ct_outputs(finding, sources, OutputContext(), pipeline.model_info)
    modalities = [ds.Modality for ds in outputs]
    assert modalities[:2] == ["SR", "SEG"] and len(modalities) > 2
    assert {ds.StudyInstanceUID for ds in outputs} == {series.study_instance_uid}
    assert all("PatientBirthDate" in ds and not ds.PatientBirthDate for ds in outputs)


def test_malformed_demographics_are_emptied_in_the_outputs_not_fatal() -> None:
    source = chest_cr(new_uids=True)
    source.PatientBirthDate = "1823-09-17"
    source.PatientSex = "m"
    source.StudyTime = "25:99:99x"
    outputs = build_xray_outputs(synthetic_xray_finding(source), [source], OutputContext(), MODEL)
    assert [ds.Modality for ds in outputs] == ["SR", "OT"]
    for ds in outputs:
        assert not ds.PatientBirthDate and not ds.PatientSex
    assert source.PatientSex == "m"  # the source is not changed


def test_an_incomplete_referenced_study_sequence_is_not_copied(tmp_path: Path) -> None:
    # Real anonymised series (TCIA Lung-PET-CT-Dx) carry Referenced Study Sequence items
    # without a SOP Class UID; copied as they are, they make the SR and SEG non-conformant.
    series = write_phantom_series(tmp_path, n_slices=40, size=96, seed=3)
    sources = [pydicom.dcmread(path) for path in series.files]
    for ds in sources:
        item = pydicom.Dataset()
        item.ReferencedSOPInstanceUID = "1.2.3.4"
        ds.ReferencedStudySequence = [item]
    pipeline = CtPipeline()
    outputs = build_ct_outputs(pipeline.run(sources), sources, OutputContext(), pipeline.model_info)
    assert all("ReferencedStudySequence" not in ds for ds in outputs)
    assert all("ReferencedStudySequence" in ds for ds in sources)  # the sources are not changed

"""A synthetic chest CT series through the real Orthanc: SR, SEG and key-image SCs come back."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.outputs.codes import CT_CATEGORY_VALUES
from tests.support.readers import read_ct_assessment, read_ct_report
from tests.support.stack import SC_STORAGE, SEG_STORAGE, SR_STORAGE
from tests.support.synthetic import write_phantom_series
from tests.support.validate import dciodvfy_errors


def test_phantom_ct_through_orthanc_returns_sr_seg_and_key_images(
    make_stack: Any, tmp_path: Path
) -> None:
    stack = make_stack()
    series = write_phantom_series(tmp_path / "ct", n_slices=48, size=128, seed=21)
    for path in series.files:  # a scanner pushing a series into the PACS
        stack.orthanc.upload(path.read_bytes())

    found = stack.wait_results(series.study_instance_uid, {SR_STORAGE, SEG_STORAGE, SC_STORAGE})
    [sr], [seg] = found[SR_STORAGE], found[SEG_STORAGE]
    key_images = found[SC_STORAGE]
    assert 1 <= len(key_images) <= 4  # up to three key images and the coronal overview

    for index, result in enumerate([sr, seg, *key_images]):
        assert result.StudyInstanceUID == series.study_instance_uid
        assert "NOT FOR CLINICAL USE" in result.SeriesDescription
        path = tmp_path / f"result{index}.dcm"
        result.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], result.Modality
    assert sr.VerificationFlag == "UNVERIFIED"

    # The SEG overlays the slices of the analysed series.
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series.series_instance_uid
    assert 0 < len(referenced.ReferencedInstanceSequence) <= len(series.files)
    labels = {str(s.SegmentLabel).lower() for s in seg.SegmentSequence}
    assert any("lung" in label for label in labels) and len(labels) == 4  # no nodule or mass
    source_uids = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in series.files
    }
    frame_sources = {
        str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        for frame in seg.PerFrameFunctionalGroupsSequence
    }
    assert frame_sources and frame_sources <= source_uids

    # The numbers in the SR are the phantom's, within the accuracy the pipeline promises.
    study = next(g for name, g in read_ct_report(sr).items() if "assessment" in name)
    involvement = next(v for k, v in study.items() if k.startswith("Lung involvement"))
    assert abs(involvement - series.truth.total.involvement_percent) <= 2.0

    jobs = stack.wait_jobs(
        lambda js: any(
            j["study_instance_uid"] == series.study_instance_uid and j["state"] == "done"
            for j in js
        )
    )
    [job] = [j for j in jobs if j["study_instance_uid"] == series.study_instance_uid]
    assert job["pipeline"] == "ct" and job["instances"] == len(series.files)
    summary = job["summary"]  # an object in jobs --json
    category = CT_CATEGORY_VALUES[summary["ct_category"]].meaning
    assert read_ct_assessment(sr)["RSNA COVID-19 CT category"] == category
    assert summary["involvement_percent"] == pytest.approx(involvement, abs=0.01)


def test_real_tcia_single_slices_are_ignored_with_a_clear_reason(
    make_stack: Any, shared_data: Path
) -> None:
    stack = make_stack()
    files = sorted((shared_data / "ct_dicom" / "covid").glob("*.dcm"))
    assert len(files) == 48
    store = subprocess.run(
        ["storescu", "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1", str(stack.node_port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
    )
    assert store.returncode == 0, store.stderr
    studies = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    jobs = stack.wait_jobs(
        lambda js: {j["study_instance_uid"] for j in js if j["state"] == "ignored"} >= studies
    )
    reasons = [job["error"] for job in jobs]
    assert all(job["state"] == "ignored" for job in jobs), jobs
    # Chest studies reach the CT pipeline, which says why it cannot analyse them; the two
    # abdomen-only studies (descriptions "ABD/PEL ...") are not routed at all.
    assert sum("single slice is not a volume" in r for r in reasons) == len(studies) - 2
    assert sum("body part missing is not chest" in r for r in reasons) == 2
    assert stack.node.health()["status"] == "ok"

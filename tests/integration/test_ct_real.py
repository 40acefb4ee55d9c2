"""A real chest CT series through the real Orthanc and the node, and variants made from it.

The series (``ct_volumes/Lung-PET-CT-Dx_A0001_5mm_kernelB``, 64 slices of 5 mm, a lung
adenocarcinoma: a mass with ground glass in the left upper lobe) is uploaded into Orthanc as a
scanner would; the variants (JPEG Lossless, JPEG 2000 and RLE compressed, shuffled and sent in
two associations, cropped, resliced to 10 mm) go straight to the node with DCMTK ``dcmsend``.
Each variant has its own UIDs; its numbers are compared with the uncompressed series' run in
this process.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.outputs.codes import CT_CATEGORY_VALUES
from dicom_node.pipelines.ct.pipeline import CtPipeline
from tests.support import ct_variants
from tests.support.readers import read_ct_assessment, read_ct_report
from tests.support.stack import SC_STORAGE, SEG_STORAGE, SR_STORAGE, Stack
from tests.support.validate import dciodvfy_errors

SERIES = "Lung-PET-CT-Dx_A0001_5mm_kernelB"
CATEGORIES = {"typical", "indeterminate", "atypical", "negative"}


@pytest.fixture(scope="module")
def series_files(shared_data: Path) -> list[Path]:
    files = sorted((shared_data / "ct_volumes" / SERIES).glob("*.dcm"))
    assert len(files) == 64
    return files


@pytest.fixture(scope="module")
def reference(series_files: list[Path]) -> dict[str, Any]:
    """The uncompressed series analysed in this process."""
    pipeline = CtPipeline.load()
    return pipeline.summarise(pipeline.run([pydicom.dcmread(p) for p in series_files]))


def _study_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _send(stack: Stack, files: list[Path]) -> None:
    """One association with DCMTK dcmsend, which proposes each file's own transfer syntax
    (``storescu -R`` proposes compressed files with an uncompressed syntax it then cannot
    convert to)."""
    done = subprocess.run(
        ["dcmsend", "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1",
         str(stack.node_port), *map(str, files)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stderr[-2000:]}\n{stack.node_log()}"


def _summary(stack: Stack, study_uid: str, instances: int) -> dict[str, Any]:
    def done(jobs: list[dict[str, Any]]) -> bool:
        return any(j["study_instance_uid"] == study_uid and j["state"] == "done" for j in jobs)

    jobs = stack.wait_jobs(done, timeout=180)
    [job] = [j for j in jobs if j["study_instance_uid"] == study_uid and j["state"] == "done"]
    assert job["pipeline"] == "ct" and job["instances"] == instances
    summary: dict[str, Any] = job["summary"]  # an object in jobs --json
    return summary


def _same_numbers(summary: dict[str, Any], reference: dict[str, Any]) -> None:
    assert summary["lung_volume_ml"] == pytest.approx(reference["lung_volume_ml"], abs=0.2)
    assert summary["involvement_percent"] == pytest.approx(
        reference["involvement_percent"], abs=0.01
    )
    assert summary["ct_category"] == reference["ct_category"]
    assert summary["features"] == reference["features"]


def _plausible(summary: dict[str, Any]) -> None:
    assert summary["ct_category"] in CATEGORIES and summary["ct_category"] == summary["label"]
    assert 2500 <= summary["lung_volume_ml"] <= 8000, summary["lung_volume_ml"]
    for side in ("right_lung", "left_lung"):
        assert summary[side]["lung_volume_ml"] > 800


def test_real_ct_through_orthanc_and_its_variants(
    make_stack: Any, tmp_path: Path, series_files: list[Path], reference: dict[str, Any]
) -> None:
    stack = make_stack()
    for path in series_files:  # a scanner pushing the series into the PACS
        stack.orthanc.upload(path.read_bytes())
    study_uid = _study_uid(series_files)
    summary = _summary(stack, study_uid, len(series_files))
    _plausible(summary)
    _same_numbers(summary, reference)
    # The real series has a mass: reported apart, not as COVID-19 involvement.
    assert summary["features"]["focal_lesions"] >= 1
    assert summary["ct_category"] != "typical"

    found = stack.wait_results(study_uid, {SR_STORAGE, SEG_STORAGE, SC_STORAGE})
    [sr], [seg] = found[SR_STORAGE], found[SEG_STORAGE]
    assert 2 <= len(found[SC_STORAGE]) <= 4  # key images and the coronal overview
    for index, result in enumerate([sr, seg, *found[SC_STORAGE]]):
        assert result.StudyInstanceUID == study_uid
        path = tmp_path / f"result{index}.dcm"
        result.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], result.Modality
    category = CT_CATEGORY_VALUES[summary["ct_category"]].meaning
    assert read_ct_assessment(sr)["RSNA COVID-19 CT category"] == category
    study = read_ct_report(sr)["CT COVID-19 assessment (AI, unverified)"]
    assert study["Lung volume"] == pytest.approx(summary["lung_volume_ml"], abs=0.1)
    labels = {str(s.SegmentLabel) for s in seg.SegmentSequence}
    assert any(label.startswith("Nodule or mass") for label in labels)

    # Compressed: decoded through the same path, the same numbers.
    for syntax in (
        ct_variants.JPEG_LOSSLESS_SV1,
        ct_variants.JPEG_2000_LOSSLESS,
        ct_variants.RLE_LOSSLESS,
    ):
        renamed = ct_variants.renamed(series_files, tmp_path / f"renamed-{syntax}", syntax)
        files = ct_variants.compressed(renamed, tmp_path / f"compressed-{syntax}", syntax)
        _send(stack, files)
        _same_numbers(_summary(stack, _study_uid(files), len(files)), reference)

    # Shuffled and in two associations (the second within the quiet period): one job.
    renamed = ct_variants.renamed(series_files, tmp_path / "renamed-shuffled", "shuffled")
    shuffled = ct_variants.copy_shuffled(renamed, tmp_path / "shuffled", seed=7)
    _send(stack, shuffled[:32])
    _send(stack, shuffled[32:])
    _same_numbers(_summary(stack, _study_uid(shuffled), 64), reference)

    # A shorter stack through the chest, and 10 mm slices: analysed, plausible.
    cropped = ct_variants.cropped(series_files, tmp_path / "cropped", first=12, count=40)
    _send(stack, cropped)
    short = _summary(stack, _study_uid(cropped), 40)
    assert short["ct_category"] in CATEGORIES - {"typical"}  # still the cancer case
    assert 1500 <= short["lung_volume_ml"] < reference["lung_volume_ml"]
    thick = ct_variants.resliced(series_files, tmp_path / "resliced")
    _send(stack, thick)
    summary = _summary(stack, _study_uid(thick), 32)
    _plausible(summary)
    assert summary["ct_category"] != "typical"
    assert summary["lung_volume_ml"] == pytest.approx(reference["lung_volume_ml"], rel=0.05)

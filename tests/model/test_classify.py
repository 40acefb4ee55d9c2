"""``dicom-node classify``: JSON lines, per-file errors, heatmaps, pipeline choice."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from dicom_node.cli.classify import run_classify
from dicom_node.domain import SEVERITY_LEVEL_NAMES
from dicom_node.pipelines.model_store import (
    CARD_FILE,
    artefact_directory,
    find_artefact,
    read_severity_card,
)
from training.data import read_manifest


def _classify(
    paths: list[Path],
    pipeline: str | None = None,
    heatmap_dir: Path | None = None,
    as_json: bool = True,
) -> tuple[int, list[dict], str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_classify(paths, pipeline, as_json, heatmap_dir, out, err)
    lines = out.getvalue().splitlines()
    parsed = [json.loads(line) for line in lines] if as_json else []
    return code, parsed, out.getvalue(), err.getvalue()


def _aspect(path: str) -> float:
    """Width / height of an input image, in source pixels."""
    if path.endswith(".dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Columns) / int(ds.Rows)
    width, height = Image.open(path).size
    return width / height


def _first(shared_data: Path, modality: str, label: str, split: str = "val") -> Path:
    for record in read_manifest(shared_data):
        if record.modality == modality and record.label == label and record.split == split:
            return shared_data / record.path
    raise AssertionError(f"no {modality}/{label} image")


def test_mixed_inputs_with_failures(shared_data: Path, tmp_path: Path) -> None:
    png = _first(shared_data, "xray", "normal")
    dicom = Path(get_testdata_file("RG1_UNCR.dcm"))
    text = tmp_path / "report.txt"
    text.write_text("this is not an image\n")
    missing = tmp_path / "missing.dcm"
    heatmaps = tmp_path / "heat"

    code, results, _, err = _classify([png, text, dicom, missing], heatmap_dir=heatmaps)
    weights = find_artefact("xray_classifier").card.decision.weights
    thresholds = read_severity_card(
        artefact_directory("xray_severity") / CARD_FILE
    ).levels.thresholds
    assert code == 1
    assert [r["path"] for r in results] == [str(png), str(text), str(dicom), str(missing)]
    for good in (results[0], results[2]):
        assert good["pipeline"] == "xray"
        assert set(good["probabilities"]) == {"covid", "normal", "pneumonia_bac"}
        assert sum(good["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        # The label follows the card's rule: argmax of probability x decision weight.
        scores = {
            k: v * w for (k, v), w in zip(good["probabilities"].items(), weights, strict=True)
        }
        assert good["label"] == max(scores, key=scores.__getitem__)
        top = max(good["probabilities"], key=good["probabilities"].__getitem__)
        assert good["triage_suspicion"] == (good["label"] != top)
        assert 0.0 <= good["heat_in_lungs"] <= 1.0
        assert 0.0 <= good["geographic_extent"] <= 8.0 and 0.0 <= good["opacity"] <= 6.0
        assert good["severity_level"] == sum(good["geographic_extent"] >= t for t in thresholds)
        assert good["severity"] == SEVERITY_LEVEL_NAMES[good["severity_level"]]
        x0, y0, x1, y1 = good["lung_box"]
        width, height = Image.open(good["heatmap"]).size  # the heatmap keeps the aspect ratio
        assert 0 <= x0 < x1 and 0 <= y0 < y1
        region = np.array(good["region"])  # its geometry: tests/model/test_xray_lungs.py
        assert region.shape[1] == 2 and (region[0] == region[-1]).all()
        assert abs(width / height - _aspect(good["path"])) < 0.01
    assert "neither a DICOM nor a PNG/JPEG" in results[1]["error"]
    assert "no such file" in results[3]["error"]
    assert str(text) in err and str(missing) in err and str(png) not in err


def test_all_good_inputs_exit_zero_and_text_output(shared_data: Path) -> None:
    paths = [_first(shared_data, "xray", label) for label in ("covid", "pneumonia_bac")]
    code, _, out, err = _classify(paths, as_json=False)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 2 and all("[xray]" in line and "covid" in line for line in lines)
    assert all("severity level" in line and "extent" in line for line in lines)


def test_unknown_pipeline_is_a_usage_error(shared_data: Path) -> None:
    code, results, _, err = _classify([_first(shared_data, "xray", "normal")], pipeline="mri")
    assert code == 2 and results == [] and "unknown pipeline" in err


def test_xray_directory_is_one_study(tmp_path: Path) -> None:
    series = tmp_path / "series"
    series.mkdir()
    for i in range(2):
        ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{i + 1}"
        ds.save_as(series / f"{i}.dcm")
    code, results, _, _ = _classify([series])
    assert code == 0 and len(results) == 1
    assert results[0]["pipeline"] == "xray" and len(results[0]["images"]) == 2


def test_single_ct_slices_are_not_analysable(shared_data: Path) -> None:
    png = _first(shared_data, "ct", "covid")
    dicom = sorted((shared_data / "ct_dicom" / "covid").glob("*.dcm"))[0]
    code, results, _, _ = _classify([png], pipeline="ct")
    assert code == 0 and results[0]["pipeline"] == "ct"
    assert "whole axial series" in results[0]["not_analysable"]
    assert results[0]["label"] is None and results[0]["probabilities"] is None
    code, results, _, _ = _classify([dicom])  # Modality CT: guessed
    assert code == 0 and results[0]["pipeline"] == "ct" and results[0]["not_analysable"]


def test_ct_directory_goes_to_the_ct_pipeline(shared_data: Path, tmp_path: Path) -> None:
    series = tmp_path / "ct_series"
    series.mkdir()
    for path in sorted((shared_data / "ct_dicom" / "covid").glob("tciasbu_A002304_*.dcm"))[:2]:
        shutil.copy(path, series / path.name)
    code, results, _, _ = _classify([series])
    assert results[0]["pipeline"] == "ct"
    # Two single-slice TCIA series: the CT pipeline answers with its own clear reason.
    assert code == 0 and results[0]["label"] is None
    assert "a single slice is not a volume" in results[0]["not_analysable"]


def test_the_real_ct_series_gets_a_category_without_tensorflow(shared_data: Path) -> None:
    series = next(p for p in (shared_data / "ct_volumes").iterdir() if p.is_dir())
    script = (
        "import sys, json, io\n"
        "from dicom_node.cli.classify import run_classify\n"
        "out = io.StringIO()\n"
        f"code = run_classify([__import__('pathlib').Path({str(series)!r})], 'ct', True, None,"
        " out, sys.stderr)\n"
        "print(json.dumps({'code': code, 'tf': 'tensorflow' in sys.modules,"
        " 'result': json.loads(out.getvalue())}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0 and report["tf"] is False
    result = report["result"]
    assert result["ct_category"] == result["label"]
    assert result["ct_category"] in {"typical", "indeterminate", "atypical", "negative"}
    assert 2500 <= result["lung_volume_ml"] <= 8000
    assert set(result["features"]) >= {"bilateral", "peripheral_share_percent", "foci"}


def test_the_command_keeps_tensorflow_start_up_lines_off_the_terminal(shared_data: Path) -> None:
    image = _first(shared_data, "xray", "covid")
    done = subprocess.run(
        [sys.executable, "-m", "dicom_node", "classify", str(image), str(image) + ".missing"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1  # one input missing
    assert "[xray]" in done.stdout
    # What the node says stays; TensorFlow's native chatter does not reach the user.
    assert done.stderr.splitlines() == [f"{image}.missing: error: no such file or directory"]


def test_a_ct_series_in_text_says_what_json_says_and_why_no_heatmap(
    shared_data: Path, tmp_path: Path
) -> None:
    series = next(p for p in (shared_data / "ct_volumes").iterdir() if p.is_dir())
    heatmaps = tmp_path / "heatmaps"
    code, [record], _, _ = _classify([series], "ct", heatmap_dir=heatmaps)
    assert code == 0 and record["heatmap"] is None
    code, _, out, err = _classify([series], "ct", heatmap_dir=heatmaps, as_json=False)
    assert code == 0 and err == ""
    [line] = out.splitlines()
    lesions = record["focal_lesions"]
    assert line.startswith(f"{series}: RSNA category {record['ct_category']}; ")
    assert f"involvement {record['involvement_percent']:.1f}% of " in line
    assert f"{record['lung_volume_ml']:.0f} mL lungs" in line
    assert f"severity {record['severity_score']}/25" in line
    assert (f"{len(lesions)} focal lesion(s)" if lesions else "no focal lesion") in line
    assert "no heatmap: the ct pipeline measures the lungs" in line
    assert not heatmaps.exists() or list(heatmaps.iterdir()) == []

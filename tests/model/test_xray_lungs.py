"""The X-ray model that looks at the lungs: lung crop, regions on the lungs, not-analysable inputs.

Everything runs the shipped models (``xray_classifier`` with ``lung_crop`` and ``ood`` in its
card, and ``lung_segmentation``) through the node's own code: the pipeline, ``classify`` and
the output builders.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as PolygonPath
from PIL import Image
from pydicom.data import get_testdata_file

from dicom_node.cli.classify import run_classify
from dicom_node.domain import XRAY_CLASSES, OutputContext, XrayImageFinding
from dicom_node.errors import NotAnalysable
from dicom_node.outputs.render import HOT_REGION_COLOUR, LUNG_OUTLINE_COLOUR
from dicom_node.outputs.xray import build_xray_outputs
from dicom_node.pipelines.xray.pipeline import INPUT_FUNCTIONS, XrayPipeline
from dicom_node.pipelines.xray.preprocessing import dataset_to_display, display_to_uint8
from dicom_node.registry import PipelineRegistry

RG1 = Path(get_testdata_file("RG1_UNCR.dcm"))


@pytest.fixture(scope="module")
def registry() -> PipelineRegistry:
    return PipelineRegistry()


@pytest.fixture(scope="module")
def pipeline(registry: PipelineRegistry) -> XrayPipeline:
    loaded = registry.get("xray").pipeline
    assert isinstance(loaded, XrayPipeline)
    return loaded


@pytest.fixture(scope="module")
def rg1() -> pydicom.Dataset:
    return pydicom.dcmread(RG1)


@pytest.fixture(scope="module")
def rg1_finding(pipeline: XrayPipeline, rg1: pydicom.Dataset) -> XrayImageFinding:
    finding = pipeline.run([rg1])
    assert len(finding.images) == 1 and not finding.not_analysed
    return finding.images[0]


def _classify(
    registry: PipelineRegistry, paths: list[Path], pipeline: str | None = None
) -> tuple[int, list[dict], str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_classify(paths, pipeline, True, None, out, err, registry=registry)
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def _inside(polygon: np.ndarray, box_xyxy: list[int], slack: float = 0.0) -> np.ndarray:
    x0, y0, x1, y1 = box_xyxy
    xs, ys = polygon[:, 0], polygon[:, 1]
    return (xs >= x0 - slack) & (xs <= x1 + slack) & (ys >= y0 - slack) & (ys <= y1 + slack)


def test_the_card_asks_for_the_lung_crop_and_the_ood_check(pipeline: XrayPipeline) -> None:
    card = pipeline.artefact.card
    assert INPUT_FUNCTIONS[card.input.function] is True  # the lung crop
    assert card.lung_crop is not None and pipeline.segmenter is not None
    assert card.ood is not None and pipeline.ood is not None
    assert pipeline.ood.dimensions == pipeline.cam.feature_channels


def test_classify_json_region_lies_on_the_lungs_of_a_real_cr(registry: PipelineRegistry) -> None:
    code, [record], _ = _classify(registry, [RG1])
    assert code == 0 and "not_analysable" not in record
    header = pydicom.dcmread(RG1, stop_before_pixels=True)
    rows, cols = int(header.Rows), int(header.Columns)
    x0, y0, x1, y1 = record["lung_box"]
    # An adult PA chest: the lungs span most of the width and about half the height, centred.
    assert 0.45 * cols <= x1 - x0 <= 0.95 * cols
    assert 0.35 * rows <= y1 - y0 <= 0.85 * rows
    assert abs((x0 + x1) / 2 - cols / 2) < 0.15 * cols
    assert y0 < 0.4 * rows and y1 > 0.6 * rows
    region = np.array(record["region"], float)
    assert region.ndim == 2 and region.shape[1] == 2 and len(region) >= 4
    np.testing.assert_array_equal(region[0], region[-1])
    assert region[:, 0].min() >= 0 and region[:, 0].max() <= cols - 1
    assert region[:, 1].min() >= 0 and region[:, 1].max() <= rows - 1
    assert _inside(region, record["lung_box"], slack=0.02 * cols).mean() >= 0.9
    assert 0.0 <= record["heat_in_lungs"] <= 1.0
    probs = record["probabilities"]
    top = max(probs, key=probs.__getitem__)
    assert record["triage_suspicion"] == (record["label"] != top)


def test_the_finding_lives_in_source_pixels(
    rg1_finding: XrayImageFinding, rg1: pydicom.Dataset
) -> None:
    image = rg1_finding
    shape = (int(rg1.Rows), int(rg1.Columns))
    assert image.heatmap.shape == shape and image.lung_mask is not None
    assert image.lung_mask.shape == shape and image.lung_mask.dtype == bool
    assert image.heatmap.min() >= 0.0 and image.heatmap.max() <= 1.0
    # The heatmap covers the crop (lung box and margin) and nothing else.
    assert image.crop_box is not None and image.lung_box is not None
    r0, r1, c0, c1 = image.crop_box
    outside = np.ones(shape, bool)
    outside[r0:r1, c0:c1] = False
    assert not image.heatmap[outside].any()
    lr0, lr1, lc0, lc1 = image.lung_box
    assert r0 <= lr0 < lr1 <= r1 and c0 <= lc0 < lc1 <= c1
    assert image.heat_in_lungs is not None and 0.0 <= image.heat_in_lungs <= 1.0
    expected = float((image.heatmap * image.lung_mask).sum() / image.heatmap.sum())
    assert image.heat_in_lungs == pytest.approx(expected, rel=1e-4)
    # Two lung fields, outlined by closed polygons inside the image.
    assert len(image.lung_outline) >= 2
    for polygon in image.lung_outline:
        np.testing.assert_array_equal(polygon[0], polygon[-1])
        assert polygon[:, 0].max() <= shape[1] - 1 and polygon[:, 1].max() <= shape[0] - 1


def test_the_hot_region_lies_on_the_lung_mask(rg1_finding: XrayImageFinding) -> None:
    image = rg1_finding
    assert image.lung_mask is not None
    rows, cols = image.lung_mask.shape
    step = 8  # sample the region's pixels on a grid: enough, and fast
    yy, xx = np.mgrid[0:rows:step, 0:cols:step]
    points = np.column_stack([xx.ravel(), yy.ravel()])
    inside = PolygonPath(image.hot_region).contains_points(points).reshape(yy.shape)
    assert inside.sum() > 10
    on_lungs = image.lung_mask[::step, ::step][inside]
    assert on_lungs.mean() >= 0.75
    # And it surrounds the hottest point of the heat on the lungs.
    hot = np.unravel_index(np.argmax(image.heatmap * image.lung_mask), image.heatmap.shape)
    assert PolygonPath(image.hot_region).contains_point((hot[1], hot[0]), radius=cols / 50)


def test_triage_flag_follows_the_label_rule(
    pipeline: XrayPipeline, rg1_finding: XrayImageFinding
) -> None:
    probs = np.array([rg1_finding.probabilities[c] for c in XRAY_CLASSES])
    label = XRAY_CLASSES[int(np.argmax(probs * pipeline.decision_weights))]
    assert rg1_finding.label == label
    assert rg1_finding.triage_suspicion == (label != XRAY_CLASSES[int(np.argmax(probs))])


def test_sc_draws_the_lung_outline_and_the_hot_region(
    pipeline: XrayPipeline, rg1: pydicom.Dataset
) -> None:
    finding = pipeline.run([rg1])
    _, sc = build_xray_outputs(finding, [rg1], OutputContext(), pipeline.model_info)
    pixels = sc.pixel_array.reshape(-1, 3)
    for colour in (LUNG_OUTLINE_COLOUR, HOT_REGION_COLOUR):
        assert (pixels == np.array(colour)).all(axis=1).sum() > 200, colour


# -- inputs that are no frontal chest radiograph ---------------------------------------------


def _rg1_display() -> np.ndarray:
    return display_to_uint8(dataset_to_display(pydicom.dcmread(RG1)))


def _png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


def _not_radiographs(tmp_path: Path, shared_data: Path) -> dict[str, Path]:
    from skimage import data

    rng = np.random.default_rng(7)
    lateral = pydicom.dcmread(RG1)
    lateral.ViewPosition = "LL"
    lateral.save_as(tmp_path / "lateral.dcm")
    ct_slice = sorted((shared_data / "ct_dicom").rglob("*.dcm"))[0]
    return {
        "blank": _png(tmp_path / "blank.png", np.zeros((1024, 1024), np.uint8)),
        "grey": _png(tmp_path / "grey.png", np.full((1024, 1024), 128, np.uint8)),
        "noise": _png(tmp_path / "noise.png", rng.integers(0, 256, (1024, 1024), dtype=np.uint8)),
        "inverted": _png(tmp_path / "inverted.png", 255 - _rg1_display()),
        "photograph": _png(tmp_path / "astronaut.png", data.astronaut()),
        "lateral": tmp_path / "lateral.dcm",
        "ct_slice": ct_slice,
    }


def test_inputs_that_are_no_radiograph_are_not_analysable(
    registry: PipelineRegistry, shared_data: Path, tmp_path: Path
) -> None:
    inputs = _not_radiographs(tmp_path, shared_data)
    code, records, err = _classify(registry, list(inputs.values()), pipeline="xray")
    assert code == 0 and err == ""
    for name, record in zip(inputs, records, strict=True):
        assert record["pipeline"] == "xray", name
        assert "error" not in record, (name, record)
        assert record.get("not_analysable"), (name, record)  # a reason, never a probability
        assert record["label"] is None and record["probabilities"] is None, name
        assert "\n" not in record["not_analysable"]
    reasons = dict(zip(inputs, (r["not_analysable"] for r in records), strict=True))
    assert "lateral" in reasons["lateral"]
    assert "CT" in reasons["ct_slice"]


def test_ct_pixels_are_not_analysable_even_when_labelled_dx(
    registry: PipelineRegistry, shared_data: Path, tmp_path: Path
) -> None:
    """The header check is not the only guard: a CT slice posing as a DX has no chest
    radiograph's lung fields (or features)."""
    ds = pydicom.dcmread(sorted((shared_data / "ct_dicom").rglob("*.dcm"))[0])
    ds.Modality = "DX"
    ds.save_as(tmp_path / "ct_as_dx.dcm")
    code, [record], _ = _classify(registry, [tmp_path / "ct_as_dx.dcm"], pipeline="xray")
    assert code == 0 and record.get("not_analysable"), record


def test_text_output_says_not_analysable(registry: PipelineRegistry, tmp_path: Path) -> None:
    blank = _png(tmp_path / "blank.png", np.zeros((512, 512), np.uint8))
    out, err = io.StringIO(), io.StringIO()
    assert run_classify([blank], "xray", False, None, out, err, registry=registry) == 0
    assert out.getvalue().startswith(f"{blank}: not analysable: ") and err.getvalue() == ""


def _blank_dicom(rg1: pydicom.Dataset, uid_suffix: str) -> pydicom.Dataset:
    blank = copy.deepcopy(rg1)
    blank.SOPInstanceUID = f"{rg1.SOPInstanceUID}.{uid_suffix}"
    blank.PixelData = np.zeros((rg1.Rows, rg1.Columns), np.uint16).tobytes()
    return blank


def test_a_study_of_unanalysable_images_is_not_analysable(
    pipeline: XrayPipeline, rg1: pydicom.Dataset
) -> None:
    blanks = [_blank_dicom(rg1, "8"), _blank_dicom(rg1, "9")]
    with pytest.raises(NotAnalysable) as raised:  # the worker's job state: ignored
        pipeline.run(blanks)
    message = str(raised.value)
    assert "\n" not in message and all(b.SOPInstanceUID in message for b in blanks)
    patient = str(rg1.get("PatientName", ""))
    assert not patient or patient not in message  # UIDs and reasons only


def test_a_mixed_study_analyses_the_radiograph_and_lists_the_others(
    pipeline: XrayPipeline, rg1: pydicom.Dataset
) -> None:
    blank = _blank_dicom(rg1, "8")
    finding = pipeline.run([blank, rg1])
    assert [f.source_sop_instance_uid for f in finding.images] == [rg1.SOPInstanceUID]
    [refused] = finding.not_analysed
    assert refused.source_sop_instance_uid == blank.SOPInstanceUID and refused.reason
    summary = pipeline.summarise(finding)
    assert summary["images"][-1] == {
        "sop_instance_uid": blank.SOPInstanceUID,
        "not_analysable": refused.reason,
    }


def test_pooled_features_come_from_the_gradcam_pass(
    pipeline: XrayPipeline, rg1: pydicom.Dataset
) -> None:
    prepared = pipeline.preprocess([rg1, rg1])
    raw = pipeline.predict(prepared)
    assert raw.features.shape == (2, pipeline.cam.feature_channels)
    np.testing.assert_allclose(raw.features[0], raw.features[1], rtol=1e-4, atol=1e-5)
    assert pipeline.ood is not None
    assert pipeline.ood(raw.features)[0] <= pipeline.ood.spec.threshold


def test_lung_outline_follows_the_mask_at_source_scale() -> None:
    from dicom_node.pipelines.xray.pipeline import lung_outline

    mask = np.zeros((2000, 1800), bool)
    mask[300:1500, 200:800] = True
    mask[350:1400, 1000:1600] = True
    polygons = lung_outline(mask)
    assert len(polygons) == 2
    for polygon, (r0, r1, c0, c1) in zip(
        sorted(polygons, key=lambda p: p[:, 0].min()),
        [(300, 1500, 200, 800), (350, 1400, 1000, 1600)],
        strict=True,
    ):
        np.testing.assert_array_equal(polygon[0], polygon[-1])
        step = 4  # 2000 px reduced to at most 512
        assert abs(polygon[:, 0].min() - c0) <= step and abs(polygon[:, 0].max() - c1) <= step
        assert abs(polygon[:, 1].min() - r0) <= step and abs(polygon[:, 1].max() - r1) <= step

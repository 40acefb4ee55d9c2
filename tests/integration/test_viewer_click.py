"""The click, end to end, in a browser: Orthanc Explorer's "Send to DICOM modality" on a study
the node has not analysed, then the results as a person sees them in OHIF.

Orthanc runs with its routing script off, so the click is what starts the analysis.  The
browser part (``tests/browser/click_to_result.js``, Debian's chromium driven by
playwright-core) reports what it saw; the assertions are here.  Screenshots stay in the
folder the test prints (``$DICOM_NODE_BROWSER_ARTEFACTS`` to choose it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.outputs.codes import CLASS_DISPLAY_NAME
from tests.support.factories import encode, viewable_chest_cr
from tests.support.readers import read_xray_report
from tests.support.stack import SC_STORAGE, SEG_STORAGE, SR_STORAGE, Stack
from tests.support.synthetic import write_phantom_series
from tests.support.viewer import OhifServer, ViewerTools, pixel_stats, run_click_driver

pytestmark = pytest.mark.browser

MODALITY = "ainode"  # the node's key in Orthanc's DicomModalities: what the person picks
DRIVER_TIMEOUT = 420.0


def assert_not_analysed(stack: Stack, study_uid: str) -> None:
    """Nothing reached the node on its own: Orthanc had time to call its (disabled) routing."""
    time.sleep(stack.orthanc.stable_age + 1.5)
    assert stack.jobs() == []
    study_id = stack.orthanc.study_id(study_uid)
    series = stack.orthanc.get(f"/studies/{study_id}/series")
    assert all(
        not s["MainDicomTags"].get("SeriesDescription", "").startswith("AI ") for s in series
    )


def click_and_view(
    stack: Stack,
    tools: ViewerTools,
    artefacts: Path,
    kind: str,
    study_uid: str,
    result_modalities: list[str],
) -> dict[str, Any]:
    with OhifServer(tools, stack.orthanc.url, stack.workdir / "ohif") as ohif:
        config = {
            "kind": kind,
            "orthanc": stack.orthanc.url,
            "studyId": stack.orthanc.study_id(study_uid),
            "studyUid": study_uid,
            "modality": MODALITY,
            "ohif": ohif.url,
            "outDir": str(artefacts),
            "resultModalities": result_modalities,
            "timeoutMs": 240_000,
        }
        seen = run_click_driver(tools, config, DRIVER_TIMEOUT)
    assert "error" not in seen, f"{seen['error']}\nscreenshots: {artefacts}\n{stack.node_log()}"
    assert seen["storeStatus"] == 200  # Explorer's own POST /modalities/ainode/store
    timings = seen["timings"]
    stored = (timings["resultsEpochMs"] - timings["clickEpochMs"]) / 1000
    drawn = (timings["drawnEpochMs"] - timings["clickEpochMs"]) / 1000
    print(
        f"{kind}: click -> results in Orthanc {stored:.1f} s, click -> drawn in OHIF {drawn:.1f} s"
    )
    return seen


def listed(seen: dict[str, Any], modality: str, description: str) -> dict[str, Any]:
    matches: list[dict[str, Any]] = [
        t
        for t in seen["thumbnails"]
        if t["modality"] == modality and t["description"] == description.strip()
    ]
    assert matches, f"OHIF does not list {modality} {description!r}: {seen['thumbnails']}"
    return matches[0]


def test_click_sends_a_radiograph_and_ohif_draws_the_sr_region(
    make_stack: Any, viewer_tools: ViewerTools, browser_artefacts: Path
) -> None:
    stack = make_stack(orthanc_options={"routing": False})
    radiograph, change = viewable_chest_cr(new_uids=True)
    assert change is not None and "Pixel Spacing" in change
    study_uid = str(radiograph.StudyInstanceUID)
    stack.orthanc.upload(encode(radiograph))
    assert_not_analysed(stack, study_uid)

    seen = click_and_view(stack, viewer_tools, browser_artefacts, "xray", study_uid, ["SR", "OT"])

    found = stack.wait_results(study_uid, {SR_STORAGE, SC_STORAGE}, timeout=10)
    [sr], [sc] = found[SR_STORAGE], found[SC_STORAGE]
    [report] = read_xray_report(sr)
    listed(seen, "CR", str(radiograph.get("SeriesDescription", "")))
    assert listed(seen, "OT", sc.SeriesDescription)["hasImage"]  # the heatmap SC
    listed(seen, "SR", sr.SeriesDescription)

    # The radiograph is rendered: real contrast, not a black or uniform viewport.
    image = pixel_stats(Path(seen["screenshots"]["radiographViewport"]))
    assert image.std > 30 and image.grey_levels > 100, image
    # The SR's region is drawn on it (a closed polyline of the SR's points, in green) ...
    drawn = seen["sr"]
    assert drawn["shapes"] >= 1 and abs(drawn["points"] - report.region_points) <= 1, drawn
    with_sr = pixel_stats(Path(seen["screenshots"]["srViewport"]))
    assert with_sr.green > image.green + 0.001 and with_sr.std > 30, (image, with_sr)
    # ... and its measurements are listed beside it, with the SR's own values.
    lines = drawn["text"].splitlines()
    for key, probability in report.probabilities.items():
        expected = f"Probability of {CLASS_DISPLAY_NAME[key]}: {probability:.2f}"
        assert any(line.startswith(expected) for line in lines), (expected, lines)
    if report.geographic_extent is not None:
        assert any(line.startswith("Geographic extent") for line in lines), lines
    # The heatmap SC shows in colour over the radiograph.
    heatmap = pixel_stats(Path(seen["screenshots"]["heatmapViewport"]))
    assert heatmap.coloured > image.coloured + 0.01 and heatmap.std > 30, (image, heatmap)


def test_click_sends_a_ct_series_and_ohif_loads_the_seg_over_it(
    make_stack: Any, viewer_tools: ViewerTools, browser_artefacts: Path, tmp_path: Path
) -> None:
    stack = make_stack(orthanc_options={"routing": False})
    series = write_phantom_series(tmp_path / "ct", n_slices=48, size=128, seed=21)
    for path in series.files:
        stack.orthanc.upload(path.read_bytes())
    assert_not_analysed(stack, series.study_instance_uid)

    seen = click_and_view(
        stack, viewer_tools, browser_artefacts, "ct", series.study_instance_uid, ["SR", "SEG", "OT"]
    )

    found = stack.wait_results(
        series.study_instance_uid, {SR_STORAGE, SEG_STORAGE, SC_STORAGE}, timeout=10
    )
    [sr], [seg] = found[SR_STORAGE], found[SEG_STORAGE]
    source = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    assert listed(seen, "CT", source.SeriesDescription)["hasImage"]
    listed(seen, "SEG", seg.SeriesDescription)
    listed(seen, "SR", sr.SeriesDescription)
    assert listed(seen, "OT", found[SC_STORAGE][0].SeriesDescription)["hasImage"]

    # The SEG loads as its segments, listed by their labels, over the source series.
    assert seen["segments"] == [str(s.SegmentLabel) for s in seg.SegmentSequence]
    assert source.SeriesDescription in seen["viewportText"]  # still the CT under the overlay
    ct = pixel_stats(Path(seen["screenshots"]["ctViewport"]))
    overlaid = pixel_stats(Path(seen["screenshots"]["segViewport"]))
    assert ct.std > 30 and ct.coloured < 0.02, ct
    assert overlaid.coloured > 0.05, overlaid  # the segments, in colour, over the grey CT
    # OHIF 3.13 draws an SR's measurement groups only where they have an image region; the CT
    # SR's groups (TID 1501 study/lung/zone values, TID 1411 segment volumes) have none, so its
    # numbers are read in the key images, where the node burns them in.
    print(f"ct: OHIF drew {seen['sr']['shapes']} annotation(s) for the CT SR")
    # The key image SC renders.
    key_image = pixel_stats(Path(seen["screenshots"]["keyImageViewport"]))
    assert key_image.std > 30 and key_image.coloured > 0.01, key_image

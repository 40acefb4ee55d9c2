"""What ``make demo`` prints about the results: plain words on what each number means."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from highdicom.sr import CodedConcept
from pydicom import Dataset

from dicom_node.domain import SEVERITY_LEVEL_NAMES, XRAY_CLASSES
from dicom_node.outputs.codes import (
    CLASS_DISPLAY_NAME,
    CONSOLIDATION_VOLUME,
    CT_CATEGORY,
    GGO_VOLUME,
    INVOLVEMENT,
    LESION_VOLUME,
    LUNG_VOLUME,
    SEVERITY_SCORE,
)
from dicom_node.pipelines.model_store import find_artefact
from tests.support.node import NodeProcess
from tests.support.readers import XrayReportImage, read_ct_assessment, read_ct_report
from tests.support.synthetic import PhantomSeries


def print_xray(report: XrayReportImage, sc: Dataset, heatmap_png: Path) -> None:
    top = max(report.probabilities, key=report.probabilities.__getitem__)
    print(f"\nX-ray: {CLASS_DISPLAY_NAME[report.label]} (model {report.algorithm})")
    for key, value in sorted(report.probabilities.items(), key=lambda kv: -kv[1]):
        print(f"  {CLASS_DISPLAY_NAME[key]:<22} {value:6.3f}")
    decision = find_artefact("xray_classifier").card.decision
    weights = ", ".join(
        f"{CLASS_DISPLAY_NAME[k]} {w:.2f}"
        for k, w in zip(XRAY_CLASSES, decision.weights, strict=True)
    )
    print("  What the label means: the triage rule's pick, not simply the top probability:")
    print(f"    label = argmax(probability x weight); weights {weights}")
    target = decision.target
    if target:
        name = CLASS_DISPLAY_NAME.get(target.class_name, target.class_name)
        print(f"    (fitted on validation for {name} sensitivity >= {target.sensitivity:.2f})")
    if report.label == top:
        print(f"  Here the label is also the top probability ({CLASS_DISPLAY_NAME[top]}).")
    else:
        print(
            f"  Here it is NOT the top probability ({CLASS_DISPLAY_NAME[top]} is): the label is a"
            "\n  suspicion at the triage threshold, and the SR and heatmap say 'suspected'."
        )
    if report.severity_level is not None:
        print(
            f"  COVID-19 severity: level {report.severity_level} "
            f"{SEVERITY_LEVEL_NAMES[report.severity_level]} (geographic extent "
            f"{report.geographic_extent:.1f}/8, opacity {report.opacity:.1f}/6; expected scores,"
            "\n  near 0 when the classifier finds the lungs normal)"
        )
    print(
        f"  Heatmap: the Secondary Capture series '{sc.SeriesDescription}'\n  (series "
        f"{sc.SeriesNumber}) in the same study; as PNG: {heatmap_png.resolve()}"
        "\n  The SR (series 'AI report') carries the hot region as an outline OHIF draws on the"
        "\n  radiograph."
    )


def print_ct(sr: Dataset, seg: Dataset, key_images: int, phantom: PhantomSeries) -> None:
    category = read_ct_assessment(sr).get(CT_CATEGORY.meaning, "?")
    study = next(g for name, g in read_ct_report(sr).items() if "assessment" in name)

    def value(concept: CodedConcept) -> float:
        return study[concept.meaning]

    truth = phantom.truth.total
    print("\nCT (synthetic phantom, not a patient):")
    print(f"  RSNA COVID-19 CT category: {category}")
    print(
        f"  Lung involvement: {value(INVOLVEMENT):.1f} % "
        f"(phantom truth {truth.involvement_percent:.1f} %)"
    )
    print(f"  CT severity score: {value(SEVERITY_SCORE):.0f}/25 (zones approximate lobes)")
    print(
        f"  Lung volume {value(LUNG_VOLUME):.0f} mL, lesions {value(LESION_VOLUME):.0f} mL"
        f" (GGO {value(GGO_VOLUME):.0f}, consolidation {value(CONSOLIDATION_VOLUME):.0f})"
    )
    segments = ", ".join(str(s.SegmentLabel) for s in seg.SegmentSequence)
    print(f"  SEG '{seg.SeriesDescription}':\n    {segments}")
    print(f"  {key_images} key image(s) with the values burned in (series 'AI key images')")


def job_for(node: NodeProcess, study_uid: str, timeout: float = 30) -> dict[str, Any]:
    """The study's job from ``dicom-node jobs --json`` once it is done (or the last one)."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            [sys.executable, "-m", "dicom_node", "jobs", "--json"],
            env=node.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        jobs: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines() if line]
        ours = [j for j in jobs if j["study_instance_uid"] == study_uid]
        done = [j for j in ours if j["state"] == "done"]
        if done or time.monotonic() > deadline:
            return done[-1] if done else (ours or jobs)[-1]
        time.sleep(0.2)


def _parse_time(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text.rstrip("Z")) if text else None


def print_timeline(name: str, job: dict[str, Any], uploaded_at: dt.datetime, stable: int) -> None:
    keys = ("received_at", "queued_at", "started_at", "processed_at", "finished_at")
    stamps = [_parse_time(job.get(key)) for key in keys]
    if any(stamp is None for stamp in stamps):
        return
    received, queued, started, processed, finished = (s for s in stamps if s is not None)

    def seconds(a: dt.datetime, b: dt.datetime) -> float:
        return (b - a).total_seconds()

    forward = seconds(uploaded_at, received)
    print(f"\n{name} timeline (seconds):")
    print(f"  upload -> node received      {forward:6.2f}  (StableAge + forward)")
    print(f"  node quiet period            {seconds(received, queued):6.2f}")
    print(f"  queue wait                   {seconds(queued, started):6.2f}")
    print(f"  analysis + building outputs  {seconds(started, processed):6.2f}")
    print(f"  C-STORE results to Orthanc   {seconds(processed, finished):6.2f}")
    active = forward - stable + seconds(queued, finished)
    print(f"  Orthanc -> node -> results stored back, quiet periods excluded: {active:.2f} s")

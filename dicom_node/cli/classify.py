"""``dicom-node classify``: ad-hoc classification of DICOM, PNG or JPEG files.

Each input is a file or a directory (one DICOM series).  The pipeline is ``--pipeline`` or
guessed: DICOM with Modality CT (or a directory of CT) -> ``ct``, anything else -> ``xray``
(give ``--pipeline ct`` for PNG/JPEG CT slices).

- ``xray``: one radiograph per file (a directory: its frontal radiographs as one study, labelled
  by the most confident image); probabilities for ``covid``, ``normal``, ``pneumonia_bac``,
  and, in source-image pixels (x = column, y = row): ``region``, the hot-region polygon
  ``[[x, y], ...]`` (on the lung fields), ``lung_box`` ``[x0, y0, x1, y1]`` (x1, y1 exclusive),
  ``heat_in_lungs`` (share of the heatmap on the lungs) and ``triage_suspicion`` (the label
  rule chose a class that is not the most probable one); with a severity model,
  ``geographic_extent`` (0-8), ``opacity`` (0-6), ``severity_level`` (0-3) and ``severity``
  (its name), see :mod:`dicom_node.pipelines.xray.severity`.  An image that is no frontal chest
  radiograph the model can read (no plausible lung fields, unlike the training images, a
  lateral view, a CT) gives ``{"not_analysable": "<reason>", "label": null, ...}``: an
  answer, not an error.
- ``ct``: a directory (a series) -> the CT pipeline (:mod:`dicom_node.pipelines.ct.pipeline`): the
  RSNA category (``label``, ``ct_category``), ``features``, ``reasons`` and the measurements.
  A single slice (PNG/JPEG or one DICOM file) is not analysable: the assessment is made on the
  volume.  The CT path imports no TensorFlow.

Output: one line per input (``--json``: one JSON object per line; failures are objects with an
``error`` key).  Errors are also written to ``err``; the exit code is 1 when any input failed,
and the other inputs are still classified.  A not-analysable image is no failure: its text line
is ``<path>: not analysable: <reason> [xray]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

import pydicom
from pydicom.errors import InvalidDicomError

from dicom_node.errors import (
    ClassifyError,
    ModelStoreError,
    NotAnalysable,
    PipelineError,
    PreprocessingError,
)
from dicom_node.pipelines.xray.preprocessing import LoadedImage, read_image
from dicom_node.pipelines.xray.severity import severity_record
from dicom_node.registry import PipelineRegistry

if TYPE_CHECKING:
    from dicom_node.pipelines.ct.pipeline import CtPipeline
    from dicom_node.pipelines.xray.pipeline import XrayPipeline

PIPELINES = ("xray", "ct")
CHUNK = 16  # x-ray files classified per batch (bounds memory for large radiographs)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class _Job:
    index: int
    path: Path
    pipeline: str
    image: LoadedImage | None = None  # a decoded file (not for directories)


def _dicom_modality(path: Path) -> str | None:
    """Modality of a DICOM file (header only), None when it is not DICOM."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    return str(ds.get("Modality", "")).upper()


def _series_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))
    dicom = [p for p in files if _dicom_modality(p) is not None]
    if not dicom:
        raise ClassifyError("the directory holds no DICOM files")
    return dicom


def _guess_pipeline(path: Path, image: LoadedImage | None) -> str:
    if path.is_dir():
        first = _series_files(path)[0]
        return "ct" if _dicom_modality(first) == "CT" else "xray"
    if image is not None and image.dataset is not None:
        return "ct" if str(image.dataset.get("Modality", "")).upper() == "CT" else "xray"
    return "xray"


def _write_heatmap(heatmap_dir: Path, path: Path, finding: Any) -> Path:
    from PIL import Image

    from dicom_node.outputs import render

    heatmap_dir.mkdir(parents=True, exist_ok=True)
    rgb = render.heatmap_picture(
        finding.display_image, finding.heatmap, finding.hot_region, finding.lung_outline, 1024
    )
    target = heatmap_dir / f"{path.stem}_heatmap.png"
    Image.fromarray(rgb).save(target)
    return target


def _model_record(model: Any) -> dict[str, Any]:
    return {"name": model.name, "version": model.version}


def _xray_record(finding: Any, model: Any) -> dict[str, Any]:
    lung_box = finding.lung_box
    return {
        "label": finding.label,
        "probabilities": {k: round(float(v), 4) for k, v in finding.probabilities.items()},
        "triage_suspicion": bool(finding.triage_suspicion),
        "region": [[round(float(x), 1), round(float(y), 1)] for x, y in finding.hot_region],
        # (row0, row1, col0, col1) -> [x0, y0, x1, y1], as image tools expect boxes.
        "lung_box": None
        if lung_box is None
        else [lung_box[2], lung_box[0], lung_box[3], lung_box[1]],
        "heat_in_lungs": None if finding.heat_in_lungs is None else round(finding.heat_in_lungs, 4),
        **severity_record(finding.severity),
        "model": _model_record(model),
    }


def _not_analysable_record(reason: str, model: Any) -> dict[str, Any]:
    """No probabilities at all: a number for an image the model cannot read would mislead."""
    return {
        "not_analysable": reason,
        "label": None,
        "probabilities": None,
        "model": _model_record(model),
    }


class _Runner:
    """Gets the pipelines from the registry, which loads each model once, on first use
    (TensorFlow import and loading take seconds)."""

    def __init__(self, heatmap_dir: Path | None, registry: PipelineRegistry) -> None:
        self.heatmap_dir = heatmap_dir
        self.registry = registry

    def xray(self) -> XrayPipeline:
        return cast("XrayPipeline", self.registry.get("xray").pipeline)

    def ct(self) -> CtPipeline:
        return cast("CtPipeline", self.registry.get("ct").pipeline)

    def xray_files(self, jobs: list[_Job]) -> list[dict[str, Any]]:
        from dicom_node.domain import XrayImageFinding

        pipeline = self.xray()
        images = [job.image for job in jobs if job.image is not None]
        results = []
        for job, outcome in zip(jobs, pipeline.analyse_images(images), strict=True):
            if not isinstance(outcome, XrayImageFinding):
                results.append(_not_analysable_record(outcome.reason, pipeline.model_info))
                continue
            record = _xray_record(outcome, pipeline.model_info)
            if self.heatmap_dir is not None:
                record["heatmap"] = str(_write_heatmap(self.heatmap_dir, job.path, outcome))
            results.append(record)
        return results

    def xray_series(self, job: _Job) -> dict[str, Any]:
        from dicom_node.pipelines.xray.pipeline import most_confident

        pipeline = self.xray()
        datasets = [pydicom.dcmread(p) for p in _series_files(job.path)]
        try:
            finding = pipeline.run(datasets)
        except NotAnalysable as exc:
            return _not_analysable_record(str(exc), pipeline.model_info)
        best = most_confident(finding, pipeline.decision_weights)
        record = _xray_record(best, pipeline.model_info)
        record["images"] = pipeline.summarise(finding)["images"]
        if self.heatmap_dir is not None:
            record["heatmap"] = str(_write_heatmap(self.heatmap_dir, job.path, best))
        return record

    def ct_slice(self, job: _Job) -> dict[str, Any]:
        pipeline = self.ct()
        return _not_analysable_record(
            "a single CT slice: the CT assessment needs the whole axial series (a directory)",
            pipeline.model_info,
        )

    def ct_series(self, job: _Job) -> dict[str, Any]:
        pipeline = self.ct()
        datasets = [pydicom.dcmread(p) for p in _series_files(job.path)]
        try:
            finding = pipeline.run(datasets)
        except NotAnalysable as exc:
            return _not_analysable_record(str(exc), pipeline.model_info)
        info = pipeline.model_info
        return {
            **pipeline.summarise(finding),
            "model": {"name": info.name, "version": info.version},
        }


def _decode(index: int, path: Path, pipeline: str | None) -> _Job:
    if not path.exists():
        raise ClassifyError("no such file or directory")
    image = None if path.is_dir() else read_image(path)
    return _Job(index, path, pipeline or _guess_pipeline(path, image), image)


def run_classify(
    paths: list[Path],
    pipeline: str | None,
    as_json: bool,
    heatmap_dir: Path | None,
    out: TextIO,
    err: TextIO,
    registry: PipelineRegistry | None = None,
) -> int:
    """Classify each input, print one line per input; 0 when all succeeded, else 1 (2: usage)."""
    if pipeline is not None and pipeline not in PIPELINES:
        err.write(f"error: unknown pipeline {pipeline!r} (choose {', '.join(PIPELINES)})\n")
        return EXIT_USAGE
    runner = _Runner(heatmap_dir, registry or PipelineRegistry())
    results: dict[int, dict[str, Any]] = {}
    jobs: list[_Job] = []

    def attempt(index: int, path: Path, name: str, work: Callable[..., Any], *args: Any) -> Any:
        try:
            return work(*args)
        except (ClassifyError, PreprocessingError, PipelineError, ModelStoreError) as exc:
            message = str(exc)
        except Exception as exc:  # one bad input must not stop the others
            message = f"{type(exc).__name__}: {exc}"
        results[index] = {"path": str(path), "pipeline": name, "error": message}
        return None

    for index, raw in enumerate(paths):
        job = attempt(index, Path(raw), pipeline or "?", _decode, index, Path(raw), pipeline)
        if job is not None:
            jobs.append(job)

    # Single x-ray files are classified in batches; directories and CT inputs one by one.
    xray_files = [j for j in jobs if j.pipeline == "xray" and j.image is not None]
    for start in range(0, len(xray_files), CHUNK):
        chunk = xray_files[start : start + CHUNK]
        batch = attempt(chunk[0].index, chunk[0].path, "xray", runner.xray_files, chunk)
        if batch is None:  # the model failed as a whole: report it for every file of the chunk
            error = results[chunk[0].index]["error"]
            for job in chunk:
                results[job.index] = {"path": str(job.path), "pipeline": "xray", "error": error}
            continue
        for job, record in zip(chunk, batch, strict=True):
            results[job.index] = {"path": str(job.path), "pipeline": "xray", **record}
    for job in jobs:
        if job.pipeline == "xray" and job.image is not None:
            continue
        if job.pipeline == "xray":
            work: Callable[[_Job], dict[str, Any]] = runner.xray_series
        elif job.image is not None:
            work = runner.ct_slice
        else:
            work = runner.ct_series
        record = attempt(job.index, job.path, job.pipeline, work, job)
        if record is not None:
            results[job.index] = {"path": str(job.path), "pipeline": job.pipeline, **record}

    failed = 0
    for index in range(len(paths)):
        result = results[index]
        if "error" in result:
            failed += 1
            err.write(f"{result['path']}: error: {result['error']}\n")
        if as_json:
            out.write(json.dumps(result) + "\n")
        elif "error" not in result:
            out.write(_text_line(result) + "\n")
    out.flush()
    return EXIT_FAILED if failed else EXIT_OK


def _text_line(result: dict[str, Any]) -> str:
    if "not_analysable" in result:
        return (
            f"{result['path']}: not analysable: {result['not_analysable']} [{result['pipeline']}]"
        )
    probs = result.get("probabilities") or {}
    detail = ", ".join(f"{k} {v:.3f}" for k, v in probs.items())
    extra = f" heatmap {result['heatmap']}" if "heatmap" in result else ""
    label = result.get("label", "?")
    if result.get("triage_suspicion"):
        label = f"{label} suspected (triage threshold)"
    if "severity_level" in result:
        detail += (
            f"; severity level {result['severity_level']} {result['severity']}, extent "
            f"{result['geographic_extent']:.1f}/8, opacity {result['opacity']:.1f}/6"
        )
    return f"{result['path']}: {label} ({detail}) [{result['pipeline']}]{extra}"

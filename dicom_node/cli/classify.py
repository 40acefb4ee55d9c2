"""``dicom-node classify``: ad-hoc classification of DICOM, PNG or JPEG files.

Each input is a file or a directory (one DICOM series).  DICOM inputs go through the node's
routing table (:mod:`dicom_node.routing`), as received studies do: it picks the pipeline and the
instances it analyses (``--pipeline`` checks the files against that pipeline's rule instead);
what no rule takes is *not analysable* with the routing reason.  PNG/JPEG files have no header:
they go to ``--pipeline`` or ``xray``.  Every pipeline is used through the seam the worker uses
(:class:`dicom_node.pipelines.base.Pipeline`): ``run``/``run_each`` then ``describe``.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from dicom_node.domain import Heatmap, ModelInfo
from dicom_node.errors import (
    ClassifyError,
    ModelStoreError,
    NotAnalysable,
    PipelineError,
    PreprocessingError,
)
from dicom_node.pipelines.xray.preprocessing import LoadedImage, read_image
from dicom_node.registry import LoadedPipeline, PipelineRegistry
from dicom_node.routing import DEFAULT_RULES, header_info, route

PIPELINES = tuple(rule.pipeline for rule in DEFAULT_RULES)
CHUNK = 16  # image files classified per batch (bounds memory for large radiographs)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
HEADERLESS_DEFAULT = "xray"  # PNG/JPEG without --pipeline


@dataclass
class _Job:
    index: int
    path: Path
    pipeline: str
    image: LoadedImage | None = None  # a decoded file (not for directories)
    series: list[Path] = field(default_factory=list)  # a directory's routed files
    refusal: str | None = None  # why routing took nothing


def _header(path: Path) -> Dataset | None:
    """A DICOM file's header, None when it is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None


def _routed(headers: Sequence[Dataset], pipeline: str | None) -> tuple[str, tuple[int, ...], str]:
    """(pipeline, indexes taken, reason): the routing table, or ``pipeline``'s rule alone."""
    rules = [r for r in DEFAULT_RULES if pipeline is None or r.pipeline == pipeline]
    decision = route([header_info(h) for h in headers], rules)
    chosen = decision.pipeline or pipeline or _nearest_pipeline(headers)
    return chosen, decision.instance_indexes, decision.reason


def _nearest_pipeline(headers: Sequence[Dataset]) -> str:
    """The pipeline to name beside a refusal: the one whose modalities the files have."""
    modalities = {str(h.get("Modality", "")).upper() for h in headers}
    for rule in DEFAULT_RULES:
        if modalities & rule.modalities:
            return rule.pipeline
    return HEADERLESS_DEFAULT


def _series(directory: Path, pipeline: str | None, job: _Job) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))
    read = [(p, _header(p)) for p in files]
    dicom = [(p, h) for p, h in read if h is not None]
    if not dicom:
        raise ClassifyError("the directory holds no DICOM files")
    job.pipeline, taken, reason = _routed([h for _, h in dicom], pipeline)
    job.series = [dicom[i][0] for i in taken]
    job.refusal = None if taken else reason


def _decode(index: int, path: Path, pipeline: str | None) -> _Job:
    if not path.exists():
        raise ClassifyError("no such file or directory")
    job = _Job(index, path, pipeline or HEADERLESS_DEFAULT)
    if path.is_dir():
        _series(path, pipeline, job)
        return job
    job.image = read_image(path)
    if job.image.dataset is not None:
        job.pipeline, taken, reason = _routed([job.image.dataset], pipeline)
        job.refusal = None if taken else reason
    return job


def _write_heatmap(heatmap_dir: Path, path: Path, picture: Heatmap) -> Path:
    from PIL import Image

    from dicom_node.outputs import render

    heatmap_dir.mkdir(parents=True, exist_ok=True)
    rgb = render.heatmap_picture(
        picture.display_image, picture.heatmap, picture.hot_region, picture.lung_outline, 1024
    )
    target = heatmap_dir / f"{path.stem}_heatmap.png"
    Image.fromarray(rgb).save(target)
    return target


def _model_record(model: ModelInfo) -> dict[str, Any]:
    return {"name": model.name, "version": model.version}


def _not_analysable_record(reason: str, model: ModelInfo | None) -> dict[str, Any]:
    """No probabilities at all: a number for an image the model cannot read would mislead."""
    return {
        "not_analysable": reason,
        "label": None,
        "probabilities": None,
        **({"model": _model_record(model)} if model is not None else {}),
    }


class _Runner:
    """Gets each pipeline from the registry (which loads its model once, on first use) and
    uses it through the seam only."""

    def __init__(self, heatmap_dir: Path | None, registry: PipelineRegistry) -> None:
        self.heatmap_dir = heatmap_dir
        self.registry = registry

    def _record(self, loaded: LoadedPipeline[Any], finding: Any, path: Path) -> dict[str, Any]:
        pipeline = loaded.pipeline
        record = {**pipeline.describe(finding), "model": _model_record(pipeline.model_info)}
        if self.heatmap_dir is not None:
            pictures = pipeline.heatmaps(finding)
            if pictures:
                record["heatmap"] = str(_write_heatmap(self.heatmap_dir, path, pictures[0]))
            else:
                record["heatmap"] = None
                record["heatmap_note"] = NO_HEATMAP.format(pipeline=pipeline.name)
        return record

    def files(self, jobs: list[_Job]) -> list[dict[str, Any]]:
        """Image files of one pipeline, as one batch."""
        loaded = self.registry.get(jobs[0].pipeline)
        images = [job.image for job in jobs if job.image is not None]
        outcomes = loaded.pipeline.run_each(images)
        return [
            _not_analysable_record(outcome, loaded.pipeline.model_info)
            if isinstance(outcome, str)
            else self._record(loaded, outcome, job.path)
            for job, outcome in zip(jobs, outcomes, strict=True)
        ]

    def series(self, job: _Job) -> dict[str, Any]:
        loaded = self.registry.get(job.pipeline)
        datasets = [pydicom.dcmread(p) for p in job.series]
        try:
            finding = loaded.pipeline.run(datasets)
        except NotAnalysable as exc:
            return _not_analysable_record(str(exc), loaded.pipeline.model_info)
        return self._record(loaded, finding, job.path)


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
        if job is None:
            continue
        if job.refusal is not None:  # the routing table took nothing: no model is loaded
            record = _not_analysable_record(job.refusal, None)
            results[index] = {"path": str(job.path), "pipeline": job.pipeline, **record}
        else:
            jobs.append(job)

    # Image files are classified in batches per pipeline; directories one by one.
    for name in PIPELINES:
        files = [j for j in jobs if j.pipeline == name and j.image is not None]
        for start in range(0, len(files), CHUNK):
            chunk = files[start : start + CHUNK]
            batch = attempt(chunk[0].index, chunk[0].path, name, runner.files, chunk)
            if batch is None:  # the model failed as a whole: report it for every file
                error = results[chunk[0].index]["error"]
                for job in chunk:
                    results[job.index] = {"path": str(job.path), "pipeline": name, "error": error}
                continue
            for job, record in zip(chunk, batch, strict=True):
                results[job.index] = {"path": str(job.path), "pipeline": name, **record}
    for job in jobs:
        if job.image is None:
            record = attempt(job.index, job.path, job.pipeline, runner.series, job)
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


NO_HEATMAP = (
    "no heatmap: the {pipeline} pipeline measures the lungs instead of explaining a class; "
    "its pictures (coronal overview, key slices) are the Secondary Captures the node sends"
)


def _text_line(result: dict[str, Any]) -> str:
    if "not_analysable" in result:
        return (
            f"{result['path']}: not analysable: {result['not_analysable']} [{result['pipeline']}]"
        )
    if "ct_category" in result:
        return _ct_text_line(result)
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


def _ct_text_line(result: dict[str, Any]) -> str:
    """What ``--json`` says of a CT series, on one line: category, involvement, lung volume,
    severity and focal lesions."""
    lesions = result.get("focal_lesions") or []
    if lesions:
        largest = max(lesions, key=lambda lesion: lesion["diameter_mm"])
        focal = (
            f"{len(lesions)} focal lesion(s), largest {largest['diameter_mm']:.0f} mm "
            f"({largest['lung']} lung)"
        )
    else:
        focal = "no focal lesion"
    detail = (
        f"RSNA category {result['ct_category']}; involvement "
        f"{result['involvement_percent']:.1f}% of {result['lung_volume_ml']:.0f} mL lungs; "
        f"severity {result['severity_score']}/25; {focal}"
    )
    note = f" ({result['heatmap_note']})" if result.get("heatmap_note") else ""
    return f"{result['path']}: {detail} [{result['pipeline']}]{note}"

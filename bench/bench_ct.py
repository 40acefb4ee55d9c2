"""CT pipeline speed and memory on a synthetic 512x512 chest CT series.

Writes a phantom series (default 300 slices of 1 mm, 512x512) to a temporary directory, then
times, for several rounds, in this process:

* the stages through the pipeline API: read (pydicom, files in the page cache), prepare
  (series selection, int16 HU working grid, lungs), lesions (GGO/consolidation, compact
  solid lesions and vessels), assess (quantification, features, RSNA category), outputs
  (SR + SEG + key-image and coronal SCs), encode (the outputs to bytes);
* in the node (analysed and outputs built, files already read): the issue's 2.5 s target;
* the whole process, ``dicom-node classify DIR --pipeline ct --json`` as a subprocess (imports
  included; the issue's 8 s target), median of 3.

Peak memory is measured in a fresh subprocess per series length (``--memory 300 1000``).
The CT assessment has no model file and imports no TensorFlow.  Usage::

    python bench/bench_ct.py [--slices 300] [--size 512] [--rounds 5] [--memory 300 1000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pydicom

from dicom_node.domain import OutputContext
from dicom_node.outputs.ct import build_ct_outputs
from dicom_node.pipelines.ct.pipeline import CtPipeline

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from tests.support.synthetic import write_phantom_series

STAGES = ("read", "prepare", "lesions", "assess", "outputs", "encode")


def encode(datasets: list[Any]) -> int:
    size = 0
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        size += buffer.tell()
    return size


def timed(times: dict[str, list[float]], stage: str, fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = fn()
    times[stage].append(time.perf_counter() - started)
    return result


def stage_round(pipeline: CtPipeline, files: list[Path], times: dict[str, list[float]]) -> None:
    """The pipeline's steps one by one."""
    sources = timed(times, "read", lambda: [pydicom.dcmread(p) for p in files])
    prepared = timed(times, "prepare", lambda: pipeline.preprocess(sources))
    raw = timed(times, "lesions", lambda: pipeline.predict(prepared))
    finding = timed(times, "assess", lambda: pipeline.postprocess(raw, prepared))
    outputs = timed(
        times,
        "outputs",
        lambda: build_ct_outputs(finding, sources, OutputContext(), pipeline.model_info),
    )
    timed(times, "encode", lambda: encode(outputs))


def in_node(pipeline: CtPipeline, sources: list[Any]) -> float:
    """Analysed and outputs built, as the worker does once the files are read."""
    started = time.perf_counter()
    finding = pipeline.run(sources)
    build_ct_outputs(finding, sources, OutputContext(), pipeline.model_info)
    return time.perf_counter() - started


def whole_process(directory: Path) -> float:
    command = [sys.executable, "-m", "dicom_node", "classify", str(directory), "--pipeline", "ct"]
    started = time.perf_counter()
    subprocess.run([*command, "--json"], check=True, capture_output=True)
    return time.perf_counter() - started


def end_to_end(pipeline: CtPipeline, files: list[Path]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    sources = [pydicom.dcmread(p) for p in files]
    finding = pipeline.run(sources)
    outputs = build_ct_outputs(finding, sources, OutputContext(), pipeline.model_info)
    encode(outputs)
    return time.perf_counter() - started, pipeline.summarise(finding)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(directory: Path) -> None:
    """Run in a fresh process: one end-to-end pass, print peak RSS figures as JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = CtPipeline.load()
        small = write_phantom_series(Path(tmp) / "warm-up", n_slices=48, size=512, seed=3)
        end_to_end(pipeline, list(small.files))  # TensorFlow's graph, imports, caches
        files = sorted(directory.glob("*.dcm"))
        after_model = rss_mb()
        seconds, _ = end_to_end(pipeline, files)
        print(json.dumps({"after_model_mb": after_model, "peak_mb": rss_mb(), "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory", type=int, nargs="*", default=[300, 1000])
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (1 min)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        series = write_phantom_series(
            work / "series", n_slices=args.slices, size=args.size, slice_spacing=1.0, seed=1
        )
        files = list(series.files)
        pipeline = CtPipeline.load()
        print(f"series: {args.slices} slices of {args.size}x{args.size}")
        end_to_end(pipeline, files)  # warm-up: imports, page cache
        times: dict[str, list[float]] = {stage: [] for stage in STAGES}
        totals = []
        summary: dict[str, Any] = {}
        for _ in range(args.rounds):
            stage_round(pipeline, files, times)
            seconds, summary = end_to_end(pipeline, files)
            totals.append(seconds)
        print(f"\nmedian of {args.rounds} rounds (seconds):")
        for stage in STAGES:
            values = times[stage]
            print(f"  {stage:9s} {statistics.median(values):6.2f}   (min {min(values):.2f})")
        stage_sum = sum(statistics.median(times[s]) for s in STAGES)
        print(f"  {'sum':9s} {stage_sum:6.2f}")
        print(
            f"end to end (read + run + outputs + encode): median {statistics.median(totals):.2f} s,"
            f" min {min(totals):.2f} s, max {max(totals):.2f} s"
        )
        sources = [pydicom.dcmread(p) for p in files]
        node = [in_node(pipeline, sources) for _ in range(args.rounds)]
        print(
            f"in the node (analysed + outputs built): median {statistics.median(node):.2f} s"
            f" (target 2.5 s: {statistics.median(node) / 2.5:.2f}x the target)"
        )
        process = statistics.median(whole_process(work / "series") for _ in range(3))
        print(
            f"whole process, dicom-node classify DIR --pipeline ct: median {process:.2f} s"
            f" (target 8 s: {process / 8:.2f}x)"
        )
        truth = series.truth.total
        print(
            f"phantom: involvement {summary['involvement_percent']:.2f}% "
            f"(truth {truth.involvement_percent:.2f}%), lung {summary['lung_volume_ml']:.0f} mL "
            f"(truth {truth.lung_ml:.0f}), severity {summary['severity_score']}/25"
        )
        del pipeline

        for n in args.memory:
            directory = work / f"memory_{n}"
            write_phantom_series(directory, n_slices=n, size=args.size, slice_spacing=0.625, seed=2)
            child = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(directory)],
                check=True,
                capture_output=True,
                text=True,
            )
            figures = json.loads(child.stdout.strip().splitlines()[-1])
            print(
                f"peak RSS, {n} slices: {figures['peak_mb']:.0f} MB "
                f"({figures['after_model_mb']:.0f} MB after a warm-up; "
                f"{figures['seconds']:.1f} s end to end)"
            )
            for path in directory.iterdir():
                path.unlink()


if __name__ == "__main__":
    main()

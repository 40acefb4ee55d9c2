"""Memory of decode and inflate bombs, and of one large honest image (issue 26; prints numbers).

Each scenario runs in a fresh subprocess that imports ``dicom_node`` from ``--code`` (default:
this checkout), so the same files can be measured against another checkout (``--code
/path/to/main``).  The subprocess resets its peak RSS (``/proc/self/clear_refs``) once set up
and reports how far ``VmHWM`` rose above its RSS at that moment, with the outcome and time.

* ``jpeg``: a 128 x 96 CR in JPEG Baseline whose frame header says ``--jpeg-side`` squared, as
  the worker takes it: the source read, then the X-ray pipeline's decode to a display image;
* ``deflate``: a Deflated Explicit VR Little Endian part of ``--deflate-mb`` MiB of zeros
  (about 1 KiB deflated per MiB) filed as STOW-RS and C-STORE file it (``file_part10``);
* ``deflate-worker``: the same file read whole by the worker (as a stored source);
* ``rle``: an honest 8192 x 8192 16-bit RLE CR (128 MiB decoded) through the worker's read and
  the X-ray pipeline's ``run`` (decode, lung segmentation, model, Grad-CAM; TensorFlow and the
  shipped models needed), after the pipeline is loaded and warmed up.

    .venv/bin/python bench/bench_bombs.py [jpeg deflate rle] [--code DIR] [--jpeg-side 30000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, os, sys, time
from pathlib import Path

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024.0
    return 0.0

scenario, path, tmp = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])

import dicom_node.worker as worker
from dicom_node.config import Settings

def read_source(path):
    if hasattr(worker, "read_source"):
        return worker.read_source(path, Settings(data_dir=tmp / "data"))
    return worker._read_source(path)

if scenario == "jpeg":
    from dicom_node.pipelines.xray.preprocessing import dataset_to_display
    run = lambda: dataset_to_display(read_source(path)).shape
elif scenario == "deflate":
    from dicom_node.admin.metrics import Metrics
    from dicom_node.config import Settings
    from dicom_node.intake.filing import Intake, file_part10
    from dicom_node.intake.scp import stow_accepted
    from dicom_node.joblog import JobLog
    settings = Settings(data_dir=tmp / "data", fsync=False, min_free_disk_mb=0)
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    joblog = JobLog.open(settings.database_path)
    intake = Intake(settings, joblog.intake, Metrics(), lambda outcome, key: None)
    def run():
        outcome = file_part10(path, intake, "BENCH", object(), stow_accepted())
        return (hex(outcome.status), outcome.reason)
elif scenario == "deflate-worker":
    run = lambda: len(read_source(path).PixelData)
elif scenario == "rle":
    from dicom_node.pipelines.xray.pipeline import XrayPipeline
    pipeline = XrayPipeline.load()
    pipeline.warm_up()
    run = lambda: pipeline.summarise(pipeline.run([read_source(path)]))
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = rss("VmRSS")
started = time.monotonic()
try:
    outcome = repr(run())
except Exception as exc:
    outcome = f"{type(exc).__name__}: {exc}"
print(json.dumps({
    "scenario": scenario,
    "seconds": round(time.monotonic() - started, 2),
    "rss_before_mb": round(before),
    "peak_rise_mb": round(rss("VmHWM") - before),
    "outcome": outcome[:300],
}))
"""


def build(scenario: str, directory: Path, args: argparse.Namespace) -> Path:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from tests.support import bombs

    path = directory / f"{scenario}.dcm"
    if scenario == "jpeg":
        ds = bombs.jpeg_bomb(args.jpeg_side, args.jpeg_side)
        ds.save_as(path, enforce_file_format=True)
    elif scenario.startswith("deflate"):
        header, wire = bombs.deflate_bomb(args.deflate_mb, declared=(8192, 8192))
        path.write_bytes(bombs.part10(wire, header, DeflatedExplicitVRLittleEndian))
    else:
        bombs.large_rle_cr(8192, 8192).save_as(path, enforce_file_format=True)
    return path


def measure(scenario: str, path: Path, code: Path, directory: Path) -> dict[str, Any]:
    size_kib = round(path.stat().st_size / 1024)  # filing moves the file
    env = {**os.environ, "PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, scenario, str(path), str(directory)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
        cwd=directory,  # not this checkout: only --code is importable
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"{scenario} failed:\n{result.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(lines[-1])
    report["code"] = str(code)
    report["file_kib"] = size_kib
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "scenarios", nargs="*", default=["jpeg", "deflate", "deflate-worker", "rle"]
    )
    parser.add_argument("--code", type=Path, default=ROOT)
    parser.add_argument("--jpeg-side", type=int, default=30000)
    parser.add_argument("--deflate-mb", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in args.scenarios:
            directory = Path(tmp) / scenario
            directory.mkdir()
            started = time.monotonic()
            path = build(scenario, directory, args)
            print(f"# built {path.name} in {time.monotonic() - started:.1f} s", file=sys.stderr)
            print(json.dumps(measure(scenario, path, args.code.resolve(), directory)))


if __name__ == "__main__":
    main()

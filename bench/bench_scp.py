"""Intake speed: DCMTK ``storescu`` sends a 300-slice 512x512 CT series (one association) to

* DCMTK ``storescp`` (reference, TCP_NODELAY=1, writes files), and
* the node's Storage SCP (in this process: atomic writes + SQLite job log), fsync on and off.

Rounds alternate between receivers and the medians are compared, all in one run, because the
machine is shared and noisy.  Usage: ``python bench/bench_scp.py [--slices 300] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dicom_node.config import Settings
from dicom_node.filing import Intake
from dicom_node.joblog import JobLog
from dicom_node.metrics import Metrics
from dicom_node.scp import start_scp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from tests.support.net import free_port
from tests.support.synthetic.writer import write_phantom_series


def send(port: int, ae: str, files: list[Path]) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["storescu", "-aet", "BENCH", "-aec", ae, "127.0.0.1", str(port), *map(str, files)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def round_storescp(files: list[Path], work: Path) -> float:
    out = work / "storescp"
    out.mkdir()
    port = free_port()
    env = {**os.environ, "TCP_NODELAY": "1"}
    server = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        seconds = send(port, "STORESCP", files)
        assert len(list(out.iterdir())) == len(files)
        return seconds
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(out)


def round_node(files: list[Path], work: Path, fsync: bool) -> float:
    settings = Settings(data_dir=work / "node", port=free_port(), fsync=fsync, min_free_disk_mb=0)
    joblog = JobLog.open(settings.database_path)
    server = start_scp(settings, Intake(settings, joblog.intake, Metrics(), lambda _outcome: None))
    try:
        seconds = send(settings.port, settings.ae_title, files)
        assert sum(1 for _ in settings.inbox_dir.rglob("*.dcm")) == len(files)
        return seconds
    finally:
        server.shutdown()
        joblog.close()
        shutil.rmtree(settings.data_dir)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        series = write_phantom_series(work / "series", n_slices=args.slices, size=512)
        files = sorted(series.files)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        print(f"series: {len(files)} slices, {megabytes:.0f} MB; {args.rounds} rounds each")
        times: dict[str, list[float]] = {"storescp": [], "node (fsync)": [], "node (no fsync)": []}
        for _ in range(args.rounds):
            times["storescp"].append(round_storescp(files, work))
            times["node (fsync)"].append(round_node(files, work, fsync=True))
            times["node (no fsync)"].append(round_node(files, work, fsync=False))
        reference = statistics.median(times["storescp"])
        print(f"{'receiver':<18}{'median s':>10}{'MB/s':>8}{'inst/s':>8}{'vs storescp':>13}")
        for name, values in times.items():
            median = statistics.median(values)
            print(
                f"{name:<18}{median:>10.2f}{megabytes / median:>8.0f}"
                f"{len(files) / median:>8.0f}{median / reference:>12.2f}x"
            )


if __name__ == "__main__":
    main()

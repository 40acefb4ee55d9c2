"""Intake speed against DCMTK ``storescp``, all in one run (the machine is shared and noisy).

1. One association: ``storescu`` sends a 300-slice 512x512 CT series (157 MB) to DCMTK
   ``storescp`` (reference: ``TCP_NODELAY=1``, ``--max-pdu 131072`` as the node's default,
   writes files) and to the node's Storage SCP in this process (header checks, atomic filing,
   SQLite job log), fsync on (the default) and off.  Rounds alternate; medians are compared.
2. Eight associations at once: 8 ``storescu`` processes, each its own 300-slice series, into
   ``storescp --fork`` (one process per association) and into a ``dicom-node serve`` process
   (fsync off, both pipelines loaded); aggregate MB/s, every instance counted in the job log,
   and the node's peak RSS (``VmHWM``) when the sends are done.

Usage: ``python bench/bench_scp.py [--slices 300] [--rounds 3] [--concurrent 8]``.
Targets (issue 13): one association, fsync off <= 1.0x storescp, fsync on <= 1.5x; 8
associations, fsync off >= 0.9x storescp's throughput; node RSS <= 1.5 GB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from dicom_node.admin.metrics import Metrics
from dicom_node.config import Settings
from dicom_node.intake.filing import Intake
from dicom_node.intake.scp import start_scp
from dicom_node.joblog import JobLog
from tests.support.net import free_port
from tests.support.nodecheck import SandboxNode
from tests.support.synthetic.writer import write_phantom_series

PDU = 131072


def storescu(port: int, ae: str, files: list[Path]) -> list[str]:
    return ["storescu", "-aet", "BENCH", "-aec", ae, "127.0.0.1", str(port), *map(str, files)]


def send(port: int, ae: str, files: list[Path]) -> float:
    started = time.perf_counter()
    subprocess.run(storescu(port, ae, files), check=True, capture_output=True)
    return time.perf_counter() - started


def send_all(port: int, ae: str, series: list[list[Path]]) -> float:
    """Every series in its own storescu process, started together; seconds until all are done."""
    started = time.perf_counter()
    senders = [
        subprocess.Popen(storescu(port, ae, files), stdout=subprocess.DEVNULL) for files in series
    ]
    codes = [sender.wait() for sender in senders]
    if any(codes):
        raise RuntimeError(f"storescu failed: exit codes {codes}")
    return time.perf_counter() - started


def start_storescp(out: Path, fork: bool) -> tuple[subprocess.Popen[bytes], int]:
    out.mkdir()
    port = free_port()
    command = ["storescp", "-aet", "STORESCP", "--max-pdu", str(PDU), "-od", str(out)]
    command += ["--fork"] if fork else []
    server = subprocess.Popen(
        [*command, str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return server, port


def round_storescp(series: list[list[Path]], work: Path) -> float:
    out = work / "storescp"
    server, port = start_storescp(out, fork=len(series) > 1)
    try:
        if len(series) == 1:
            seconds = send(port, "STORESCP", series[0])
        else:
            seconds = send_all(port, "STORESCP", series)
        expected = sum(len(files) for files in series)
        assert len(list(out.iterdir())) == expected, "storescp lost files"
        return seconds
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(out)


def round_node(files: list[Path], work: Path, fsync: bool) -> float:
    settings = Settings(data_dir=work / "node", port=free_port(), fsync=fsync, min_free_disk_mb=0)
    joblog = JobLog.open(settings.database_path)
    intake = Intake(settings, joblog.intake, Metrics(), lambda _outcome, _association: None)
    server = start_scp(settings, intake)
    try:
        seconds = send(settings.port, settings.ae_title, files)
        assert sum(1 for _ in settings.inbox_dir.rglob("*.dcm")) == len(files)
        return seconds
    finally:
        server.shutdown()
        joblog.close()
        shutil.rmtree(settings.data_dir)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def round_node_process(series: list[list[Path]], work: Path) -> tuple[float, float, int]:
    """(seconds, peak RSS MB, instances in the job log) of a ``dicom-node serve`` process."""
    sandbox = work / "serve"
    node = SandboxNode(
        sandbox,
        work / "serve.log",
        "none",
        # One worker, so that both pipelines are loaded (preload); the studies complete only
        # after their senders release, so analysis does not overlap the sends much.
        worker_threads=1,
        maximum_associations=len(series) + 2,
        reserved_associations=1,
        fsync="false",
        preload_models="true",
        allowed_aes="BENCH",
    )
    node.start(timeout=300)
    try:
        seconds = send_all(node.port, "AINODE", series)
        assert node._process is not None
        rss = peak_rss_mb(node._process.pid)
        with sqlite3.connect(node.data_dir / "jobs.sqlite") as db:
            (filed,) = db.execute("SELECT COUNT(*) FROM instances").fetchone()
        return seconds, rss, int(filed)
    finally:
        node.stop()
        shutil.rmtree(sandbox)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        series = [
            sorted(write_phantom_series(work / f"s{i}", args.slices, 512, seed=i).files)
            for i in range(args.concurrent)
        ]
        files = series[0]
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        print(f"series: {len(files)} slices, {megabytes:.0f} MB; {args.rounds} rounds each")
        times: dict[str, list[float]] = {"storescp": [], "node (fsync)": [], "node (no fsync)": []}
        for _ in range(args.rounds):
            times["storescp"].append(round_storescp([files], work))
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

        total_mb = megabytes * args.concurrent
        n = args.concurrent
        print(f"\n{n} associations at once, {n} x {len(files)} slices ({total_mb:.0f} MB):")
        reference_s = statistics.median(
            round_storescp(series, work) for _ in range(max(1, args.rounds - 1))
        )
        node_runs = [round_node_process(series, work) for _ in range(max(1, args.rounds - 1))]
        node_s = statistics.median(r[0] for r in node_runs)
        rss = max(r[1] for r in node_runs)
        counted = {r[2] for r in node_runs}
        print(f"{'receiver':<28}{'s':>8}{'MB/s':>8}{'vs storescp':>13}")
        print(
            f"{'storescp --fork':<28}{reference_s:>8.2f}{total_mb / reference_s:>8.0f}{1:>12.2f}x"
        )
        print(
            f"{'dicom-node serve (no fsync)':<28}{node_s:>8.2f}{total_mb / node_s:>8.0f}"
            f"{reference_s / node_s:>12.2f}x throughput"
        )
        print(
            f"node: instances in the job log per run {sorted(counted)} (expected {n * len(files)})"
        )
        print(f"node peak RSS (VmHWM, both pipelines loaded): {rss:.0f} MB")


if __name__ == "__main__":
    main()

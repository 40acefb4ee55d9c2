"""Turnaround: from the end of a send (``storescu`` released its association) to the last result
stored back in Orthanc, models loaded, default quiet periods (CR 5 s, CT 20 s) and release grace.

A real Orthanc (routing off: the sender talks to the node directly) receives the results; the
time each result was acknowledged by Orthanc is the delivery's ``sent_at`` in the node's job
log (same clock).  X-ray: pydicom-data's chest CR ``RG1_UNCR.dcm`` (new UIDs each round);
CT: a 300-slice 512x512 phantom series (SR + SEG + key images + overview).

Usage: ``python bench/bench_turnaround.py [--rounds 3]``.  Targets (issue 13): X-ray <= 2 s,
CT <= 6 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from dicom_node.config import Settings
from tests.support.net import free_port
from tests.support.node import NodeProcess
from tests.support.orthanc import NodeTarget, OrthancServer
from tests.support.synthetic.writer import write_phantom_series


def send(port: int, files: list[Path]) -> dt.datetime:
    """storescu the files; the UTC time its association was released (the process ended)."""
    command = ["storescu", "-aet", "MODALITY", "-aec", "AINODE", "127.0.0.1", str(port)]
    subprocess.run([*command, *map(str, files)], check=True, capture_output=True)
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def delivered_at(database: Path, study_uid: str, expected: int, timeout: float) -> dt.datetime:
    """When the last of the study's ``expected`` results was acknowledged by the PACS."""
    deadline = time.monotonic() + timeout
    query = (
        "SELECT COUNT(*), MAX(d.sent_at) FROM deliveries d JOIN jobs j ON j.id = d.job_id "
        "JOIN studies s ON s.id = j.study_id WHERE s.study_instance_uid = ? AND d.state = 'sent'"
    )
    while time.monotonic() < deadline:
        with sqlite3.connect(database) as db:
            count, last = db.execute(query, (study_uid,)).fetchone()
        if count >= expected and last:
            return dt.datetime.fromisoformat(str(last))
        time.sleep(0.05)
    raise TimeoutError(f"{expected} results of {study_uid} not delivered in {timeout:.0f} s")


def result_count(database: Path, study_uid: str, timeout: float = 120) -> int:
    """How many deliveries the study's job has (known once its outputs are written)."""
    deadline = time.monotonic() + timeout
    query = (
        "SELECT COUNT(*) FROM deliveries d JOIN jobs j ON j.id = d.job_id JOIN studies s "
        "ON s.id = j.study_id WHERE s.study_instance_uid = ?"
    )
    while time.monotonic() < deadline:
        with sqlite3.connect(database) as db:
            (count,) = db.execute(query, (study_uid,)).fetchone()
        if count:
            return int(count)
        time.sleep(0.05)
    raise TimeoutError(f"no results for {study_uid}")


def xray_copy(directory: Path, round_number: int) -> tuple[list[Path], str]:
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = directory / f"rg1-{round_number}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return [path], str(ds.StudyInstanceUID)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    defaults = Settings()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        node_port, orthanc_dicom = free_port(), free_port()
        orthanc = OrthancServer(
            work / "orthanc",
            http_port=free_port(),
            dicom_port=orthanc_dicom,
            node=NodeTarget("AINODE", "127.0.0.1", node_port),
            routing=False,
        )
        env = {
            "DICOM_NODE_AE_TITLE": "AINODE",
            "DICOM_NODE_HOST": "127.0.0.1",
            "DICOM_NODE_PORT": str(node_port),
            "DICOM_NODE_HTTP_PORT": str(free_port()),
            "DICOM_NODE_PACS": f"ORTHANC@127.0.0.1:{orthanc_dicom}",
            "DICOM_NODE_ALLOWED_AES": "MODALITY,ORTHANC",
            "DICOM_NODE_MIN_FREE_DISK_MB": "100",
        }
        node = NodeProcess(work / "node", env, work / "node.log")
        orthanc.start()
        node.start(timeout=300)
        database = node.data_dir / "jobs.sqlite"
        try:
            print(
                f"quiet periods {dict(defaults.quiet_seconds_by_modality)}, release grace "
                f"{defaults.release_grace_seconds} s, fsync on"
            )
            xray = []
            for r in range(args.rounds):
                files, study = xray_copy(work, r)
                released = send(node_port, files)
                last = delivered_at(database, study, result_count(database, study), 60)
                xray.append((last - released).total_seconds())
            series = write_phantom_series(work / "ct", n_slices=300, size=512)
            ct = []
            for r in range(max(1, args.rounds - 1)):
                files = sorted(series.files)
                if r:  # a new study each round: new UIDs for the same pixels
                    series = write_phantom_series(work / f"ct{r}", n_slices=300, size=512, seed=r)
                    files = sorted(series.files)
                released = send(node_port, files)
                study = series.study_instance_uid
                last = delivered_at(database, study, result_count(database, study), 120)
                ct.append((last - released).total_seconds())
        finally:
            node.stop()
            orthanc.stop()
        print(f"{'study':<34}{'median s':>10}   runs")
        print(
            f"{'X-ray RG1: SR + SC stored back':<34}{statistics.median(xray):>10.2f}   "
            f"{', '.join(f'{s:.2f}' for s in xray)}  (target 2 s)"
        )
        print(
            f"{'CT 300 slices: SR + SEG + SCs':<34}{statistics.median(ct):>10.2f}   "
            f"{', '.join(f'{s:.2f}' for s in ct)}  (target 6 s)"
        )


if __name__ == "__main__":
    main()

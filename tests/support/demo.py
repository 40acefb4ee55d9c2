"""``make demo``: Orthanc and the node on loopback, a real chest CR through the whole path.

1. starts Orthanc (Debian package) with ``orthanc/orthanc.json`` and the Lua routing script,
   and ``dicom-node serve`` wired to it;
2. uploads pydicom-data's real chest radiograph (``RG1_UNCR.dcm``) to Orthanc, as a
   modality would; Orthanc forwards the stable study to the node;
3. waits for the SR and the heatmap Secondary Capture to come back into the same study,
   prints the finding, the probabilities, a timeline and where to look;
4. keeps both running for browsing until Ctrl-C (``--exit`` stops right away).

Research use only, not for diagnosis.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

from dicom_node import RESEARCH_NOTICE
from dicom_node.domain import SEVERITY_LEVEL_NAMES
from dicom_node.outputs.codes import CLASS_DISPLAY_NAME
from dicom_node.outputs.readers import read_xray_report
from tests.support.net import free_port
from tests.support.node import NodeProcess
from tests.support.orthanc import NodeTarget, OrthancServer
from tests.support.stack import SC_STORAGE, SR_STORAGE

ORTHANC_STABLE_AGE = 2
NODE_QUIET_SECONDS = 2


def _port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def _parse_time(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text.rstrip("Z")) if text else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", type=Path, default=Path(".demo"))
    parser.add_argument("--exit", action="store_true", help="stop once the results are back")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)

    sample = Path(get_testdata_file("RG1_UNCR.dcm") or "")
    if not sample.is_file():
        print("pydicom-data is missing: run `make install`", file=sys.stderr)
        return 1
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True)

    node_port, orthanc_dicom = _port(11112), _port(4242)
    orthanc = OrthancServer(
        args.workdir / "orthanc",
        http_port=_port(8042),
        dicom_port=orthanc_dicom,
        node=NodeTarget("AINODE", "127.0.0.1", node_port),
        stable_age=ORTHANC_STABLE_AGE,
    )
    env = {
        "DICOM_NODE_AE_TITLE": "AINODE",
        "DICOM_NODE_PORT": str(node_port),
        "DICOM_NODE_HTTP_PORT": str(_port(8110)),
        "DICOM_NODE_PACS": f"ORTHANC@127.0.0.1:{orthanc_dicom}",
        "DICOM_NODE_ALLOWED_AES": "ORTHANC",
        "DICOM_NODE_STUDY_QUIET_SECONDS": str(NODE_QUIET_SECONDS),
        "DICOM_NODE_MIN_FREE_DISK_MB": "200",
    }
    node = NodeProcess(args.workdir / "node-data", env, args.workdir / "node.log")
    print(f"dicom-node demo - {RESEARCH_NOTICE}\n")
    try:
        print(f"starting Orthanc on http://127.0.0.1:{orthanc.http_port} (DICOM {orthanc_dicom})")
        orthanc.start()
        print(f"starting dicom-node AINODE on 127.0.0.1:{node_port} (loading models)")
        node.start()
        return _run(args, sample, orthanc, node)
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    finally:
        print("stopping dicom-node and Orthanc")
        node.stop()
        orthanc.stop()


def _run(args: argparse.Namespace, sample: Path, orthanc: OrthancServer, node: NodeProcess) -> int:
    source = pydicom.dcmread(sample, stop_before_pixels=True)
    study_uid = str(source.StudyInstanceUID)
    print(f"uploading {sample.name} (chest CR, {source.Rows}x{source.Columns}) to Orthanc")
    uploaded_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    orthanc.upload(sample.read_bytes())
    print(f"waiting: Orthanc StableAge {ORTHANC_STABLE_AGE} s, node quiet {NODE_QUIET_SECONDS} s")
    try:
        found = orthanc.wait_results(study_uid, "AINODE", {SR_STORAGE, SC_STORAGE}, args.timeout)
    except TimeoutError as exc:
        print(f"{exc}; node log: {node.log_path}", file=sys.stderr)
        return 1
    [report] = read_xray_report(found[SR_STORAGE][0])
    job = _job(node, study_uid)

    print(f"\nFinding: {CLASS_DISPLAY_NAME[report.label]} (model {report.algorithm})")
    for key, value in sorted(report.probabilities.items(), key=lambda kv: -kv[1]):
        print(f"  {CLASS_DISPLAY_NAME[key]:<22} {value:6.3f}")
    if report.label != max(report.probabilities, key=report.probabilities.__getitem__):
        print(
            "  (the label rule weighs COVID-19 up, a triage operating point fitted on validation;"
            "\n   see models/xray_classifier/*/model_card.md)"
        )
    if report.severity_level is not None:
        print(
            f"  COVID-19 severity: level {report.severity_level} "
            f"{SEVERITY_LEVEL_NAMES[report.severity_level]} (geographic extent "
            f"{report.geographic_extent:.1f}/8, opacity {report.opacity:.1f}/6; expected scores,"
            "\n   near 0 when the classifier finds the lungs normal; see "
            "models/xray_severity/*/model_card.md)"
        )
    heatmap = args.workdir / "heatmap.png"
    Image.fromarray(found[SC_STORAGE][0].pixel_array).save(heatmap)
    study_id = orthanc.study_id(study_uid)
    print(f"\nOrthanc Explorer: {orthanc.url}/app/explorer.html#study?uuid={study_id}")
    print(f"Heatmap (Secondary Capture as PNG): {heatmap.resolve()}")
    print(f"DICOMweb for OHIF: {orthanc.url}/dicom-web/")
    _print_timeline(job, uploaded_at)
    print("\nJob log (dicom-node jobs):")
    subprocess.run([sys.executable, "-m", "dicom_node", "jobs"], env=node.env, check=False)
    print(f"\n{RESEARCH_NOTICE}")
    if args.exit:
        return 0
    print("\nOrthanc and dicom-node keep running for browsing; press Ctrl-C to stop.")
    while node.running and orthanc.running:
        time.sleep(1)
    return 0


def _job(node: NodeProcess, study_uid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(
            [sys.executable, "-m", "dicom_node", "jobs", "--json"],
            env=node.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        jobs: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines() if line.strip()]
        done = [j for j in jobs if j["study_instance_uid"] == study_uid and j["state"] == "done"]
        if done or time.monotonic() > deadline:
            return done[-1] if done else jobs[-1]
        time.sleep(0.2)


def _print_timeline(job: dict[str, Any], uploaded_at: dt.datetime) -> None:
    keys = ("received_at", "queued_at", "started_at", "processed_at", "finished_at")
    stamps = [_parse_time(job.get(key)) for key in keys]
    if any(stamp is None for stamp in stamps):
        return
    received, queued, started, processed, finished = (s for s in stamps if s is not None)

    def seconds(a: dt.datetime, b: dt.datetime) -> float:
        return (b - a).total_seconds()

    forward = seconds(uploaded_at, received)
    print("\nTimeline (seconds):")
    print(f"  upload -> node received      {forward:6.2f}  (StableAge + forward)")
    print(f"  node quiet period            {seconds(received, queued):6.2f}")
    print(f"  queue wait                   {seconds(queued, started):6.2f}")
    print(f"  analysis + building outputs  {seconds(started, processed):6.2f}")
    print(f"  C-STORE SR + SC to Orthanc   {seconds(processed, finished):6.2f}")
    active = forward - ORTHANC_STABLE_AGE + seconds(queued, finished)
    print(f"  Orthanc -> node -> SR stored back, quiet periods excluded: {active:.2f} s")
    print("  (Orthanc checks stability once a second, so up to 1 s of that is its polling)")


if __name__ == "__main__":
    raise SystemExit(main())

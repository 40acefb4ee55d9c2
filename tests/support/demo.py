"""``make demo``: Orthanc and the node on loopback, a radiograph and a CT through the whole path.

1. starts Orthanc (Debian package) with ``orthanc/orthanc.json`` and the Lua routing script,
   and ``dicom-node serve`` wired to it; with ``--ohif`` (``OHIF=1 make demo``) also OHIF,
   served locally with a DICOMweb proxy to Orthanc (needs npm; fetched once into a cache);
2. uploads to Orthanc, as modalities would: pydicom-data's real chest radiograph
   (``RG1_UNCR.dcm``, as a copy without its invalid Pixel Spacing 0\\0, which OHIF cannot
   render) and a synthetic chest CT phantom series (labelled synthetic in its descriptions);
   Orthanc forwards each stable study to the node;
3. waits for the results (X-ray: SR and heatmap SC; CT: SR, SEG and key images) to come back
   into the same studies and prints them, what the label means, where the heatmap is, a
   timeline, and the Orthanc Explorer and OHIF links;
4. keeps everything running for browsing until Ctrl-C (``--exit`` stops right away).

Research use only, not for diagnosis.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from dicom_node import RESEARCH_NOTICE
from tests.support import demo_report
from tests.support.factories import encode, viewable_chest_cr
from tests.support.net import free_port
from tests.support.node import NodeProcess
from tests.support.orthanc import NodeTarget, OrthancServer
from tests.support.readers import read_xray_report
from tests.support.stack import SC_STORAGE, SEG_STORAGE, SR_STORAGE
from tests.support.synthetic import PhantomSeries, write_phantom_series
from tests.support.viewer import OhifServer, install_viewer

ORTHANC_STABLE_AGE = 2
NODE_QUIET_SECONDS = 2


def _port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", type=Path, default=Path(".demo"))
    parser.add_argument("--exit", action="store_true", help="stop once the results are back")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument(
        "--ohif",
        action="store_true",
        default=os.environ.get("OHIF", "") not in ("", "0"),
        help="also serve OHIF on loopback (default from $OHIF=1; needs npm)",
    )
    args = parser.parse_args(argv)

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
    with contextlib.ExitStack() as running:
        try:
            print(f"starting Orthanc on {orthanc.url} (DICOM {orthanc_dicom})")
            orthanc.start()
            running.callback(orthanc.stop)
            print(f"starting dicom-node AINODE on 127.0.0.1:{node_port} (loading models)")
            node.start()
            running.callback(node.stop)
            ohif = _start_ohif(args, orthanc, running) if args.ohif else None
            return _run(args, orthanc, node, ohif)
        except KeyboardInterrupt:
            print("\ninterrupted")
            return 130
        finally:
            print("stopping dicom-node, Orthanc and OHIF")
    return 0


def _start_ohif(
    args: argparse.Namespace, orthanc: OrthancServer, running: contextlib.ExitStack
) -> OhifServer | None:
    if shutil.which("npm") is None or shutil.which("node") is None:
        print("OHIF: not started, node/npm are not installed (scripts/install-system-deps.sh)")
        return None
    print("fetching OHIF into the viewer cache (first time only, about 50 MB)")
    try:
        tools = install_viewer()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"OHIF: not started ({exc})")
        return None
    ohif = OhifServer(tools, orthanc.url, args.workdir / "ohif", port=_port(8090))
    ohif.start()
    running.callback(ohif.stop)
    print(f"OHIF on {ohif.url} (DICOMweb proxied to Orthanc)")
    return ohif


def _run(
    args: argparse.Namespace, orthanc: OrthancServer, node: NodeProcess, ohif: OhifServer | None
) -> int:
    radiograph, change = viewable_chest_cr()
    xray_uid = str(radiograph.StudyInstanceUID)
    print(f"\nuploading RG1_UNCR.dcm (real chest CR, {radiograph.Rows}x{radiograph.Columns})")
    if change:
        print(f"  sent as a copy: {change}")
    xray_uploaded = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    orthanc.upload(encode(radiograph))

    phantom = write_phantom_series(args.workdir / "ct-phantom", n_slices=64, size=256, seed=21)
    print(f"uploading a synthetic chest CT phantom series ({len(phantom.files)} slices of 256x256)")
    ct_uploaded = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    for path in phantom.files:
        orthanc.upload(path.read_bytes())
    print(f"waiting: Orthanc StableAge {ORTHANC_STABLE_AGE} s, node quiet {NODE_QUIET_SECONDS} s")
    try:
        xray = orthanc.wait_results(xray_uid, "AINODE", {SR_STORAGE, SC_STORAGE}, args.timeout)
        ct = orthanc.wait_results(
            phantom.study_instance_uid,
            "AINODE",
            {SR_STORAGE, SEG_STORAGE, SC_STORAGE},
            args.timeout,
        )
    except TimeoutError as exc:
        print(f"{exc}; node log: {node.log_path}", file=sys.stderr)
        return 1

    # Every result has arrived once the jobs are done (the key images come last).
    xray_job = demo_report.job_for(node, xray_uid)
    ct_job = demo_report.job_for(node, phantom.study_instance_uid)
    ct = orthanc.results_from(phantom.study_instance_uid, "AINODE", set(ct))
    [report] = read_xray_report(xray[SR_STORAGE][0])
    heatmap = args.workdir / "heatmap.png"
    Image.fromarray(xray[SC_STORAGE][0].pixel_array).save(heatmap)
    demo_report.print_xray(report, xray[SC_STORAGE][0], heatmap)
    demo_report.print_ct(ct[SR_STORAGE][0], ct[SEG_STORAGE][0], len(ct[SC_STORAGE]), phantom)
    _print_links(orthanc, ohif, xray_uid, phantom)

    demo_report.print_timeline("X-ray", xray_job, xray_uploaded, ORTHANC_STABLE_AGE)
    demo_report.print_timeline("CT", ct_job, ct_uploaded, ORTHANC_STABLE_AGE)
    print("  (Orthanc checks stability once a second, so up to 1 s of that is its polling)")
    print("\nJob log (dicom-node jobs):")
    subprocess.run([sys.executable, "-m", "dicom_node", "jobs"], env=node.env, check=False)
    print(f"\n{RESEARCH_NOTICE}")
    if args.exit:
        return 0
    print("\nOrthanc and dicom-node keep running for browsing; press Ctrl-C to stop.")
    while node.running and orthanc.running:
        time.sleep(1)
    return 0


def _print_links(
    orthanc: OrthancServer, ohif: OhifServer | None, xray_uid: str, phantom: PhantomSeries
) -> None:
    print("\nWhere to look:")
    for name, uid in (("X-ray", xray_uid), ("CT", phantom.study_instance_uid)):
        study_page = f"{orthanc.url}/app/explorer.html#study?uuid={orthanc.study_id(uid)}"
        print(f"  {name} in Orthanc Explorer: {study_page}")
        if ohif is not None:
            print(f"  {name} in OHIF:             {ohif.viewer_url(uid)}")
    if ohif is None:
        print("  OHIF: `OHIF=1 make demo` serves it here too (needs npm)")
    else:
        print(
            "  In OHIF: double-click 'AI report' to draw the SR's region on the radiograph;"
            "\n  'AI segmentation' loads the CT's segments (answer Yes)."
        )
    print(f"  DICOMweb: {orthanc.url}/dicom-web/")


if __name__ == "__main__":
    raise SystemExit(main())

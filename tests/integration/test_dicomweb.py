"""DICOMweb both ways against Orthanc's DICOMweb plugin: results by STOW-RS to the PACS, and
studies by STOW-RS into the node (Orthanc's own DICOMweb client as the sender)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file

from tests.support.net import free_port
from tests.support.readers import read_xray_report
from tests.support.stack import SC_STORAGE, SR_STORAGE, Stack

RG1 = Path(get_testdata_file("RG1_UNCR.dcm") or "")
OVER_HTTP = ""  # Orthanc records no RemoteAET for instances stored over HTTP


def _wait_for_log(stack: Stack, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in stack.node_log():
            return
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never logged\n{stack.node_log()}")


def test_results_go_to_orthanc_by_stow_rs_retried_until_it_is_up(make_stack: Any) -> None:
    stack = make_stack(start_orthanc=False, start_node=False)
    pacs = f"dicomweb+{stack.orthanc.url}/dicom-web"
    stack.env["DICOM_NODE_PACS"] = stack.node.env["DICOM_NODE_PACS"] = pacs
    stack.node.start()
    study_uid = str(pydicom.dcmread(RG1, stop_before_pixels=True).StudyInstanceUID)

    assert stack.c_store(pydicom.dcmread(RG1)) == 0x0000  # a modality sends to the node directly
    _wait_for_log(stack, "STOW-RS request failed (ConnectionError)")  # the PACS is down
    stack.orthanc.start()

    found = stack.orthanc.wait_results(study_uid, OVER_HTTP, {SR_STORAGE, SC_STORAGE}, 120)
    [report] = read_xray_report(found[SR_STORAGE][0])
    assert report.source_sop_instance_uid == pydicom.dcmread(RG1).SOPInstanceUID
    origins = {i["origin"] for i in stack.orthanc.study_instances(study_uid)}
    assert origins == {"Plugins"}  # stored by the DICOMweb plugin (STOW-RS), not by C-STORE
    [job] = stack.wait_jobs(lambda jobs: bool(jobs) and jobs[0]["state"] == "done")
    assert job["deliveries_sent"] == job["deliveries_total"] == 2


def test_orthanc_sends_a_study_by_stow_rs_and_the_results_come_back(make_stack: Any) -> None:
    stow_port = free_port()
    stack = make_stack(
        orthanc_options={
            "routing": False,  # the STOW-RS request, not the routing script, sends the study
            "dicomweb_servers": {"ainode": f"http://127.0.0.1:{stow_port}/dicom-web"},
        },
        dicomweb_port=str(stow_port),
    )
    study_uid = str(pydicom.dcmread(RG1, stop_before_pixels=True).StudyInstanceUID)
    stack.orthanc.upload(RG1.read_bytes())
    study_id = stack.orthanc.study_id(study_uid)

    body = json.dumps({"Resources": [study_id], "Synchronous": True}).encode()
    answer = stack.orthanc.request("POST", "/dicom-web/servers/ainode/stow", body)

    assert answer is not None
    found = stack.wait_results(study_uid, {SR_STORAGE, SC_STORAGE})  # back by C-STORE
    assert read_xray_report(found[SR_STORAGE][0])[0].label
    [job] = stack.jobs()
    assert job["state"] == "done" and job["instances"] == 1
    assert "from DICOMWEB" in stack.node_log()  # the job log's calling AE for STOW-RS

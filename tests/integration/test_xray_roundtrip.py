"""The whole path on real parts: Orthanc, the node, DCMTK clients, crashes, PACS outages."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_fragmented_frames

from dicom_node.domain import XRAY_CLASSES
from dicom_node.pipelines.model_store import (
    CARD_FILE,
    artefact_directory,
    find_artefact,
    read_severity_card,
)
from tests.support.factories import chest_cr, small_cr
from tests.support.readers import read_xray_report
from tests.support.stack import SC_STORAGE, SR_STORAGE, Stack
from tests.support.validate import dciodvfy_errors

RG1 = Path(get_testdata_file("RG1_UNCR.dcm") or "")
RG1_J2K = Path(get_testdata_file("RG1_J2KR.dcm") or "")


def c_store(stack: Stack, dataset: Dataset, calling_ae: str = "MODALITY") -> int:
    return stack.c_store(dataset, calling_ae)


def by_study(jobs: list[dict[str, Any]], study_uid: str) -> list[dict[str, Any]]:
    return [job for job in jobs if job["study_instance_uid"] == study_uid]


def test_chest_cr_sent_from_orthanc_returns_as_sr_and_sc(make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack()
    source = pydicom.dcmread(RG1)
    study_uid = str(source.StudyInstanceUID)
    stack.orthanc.upload(RG1.read_bytes())  # as a modality would; Lua forwards when stable

    found = stack.wait_results(study_uid, {SR_STORAGE, SC_STORAGE})
    [sr], [sc] = found[SR_STORAGE], found[SC_STORAGE]

    for result in (sr, sc):
        assert result.StudyInstanceUID == study_uid
        assert result.PatientID == source.PatientID
        assert "NOT FOR CLINICAL USE" in result.SeriesDescription
        path = tmp_path / f"{result.Modality}.dcm"
        result.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], result.Modality

    assert sr.VerificationFlag == "UNVERIFIED"
    [image] = read_xray_report(sr)
    assert image.source_sop_instance_uid == source.SOPInstanceUID
    assert image.region_type == "POLYLINE"
    assert set(image.probabilities) == {"covid", "normal", "pneumonia_bac"}
    assert sum(image.probabilities.values()) == pytest.approx(1.0, abs=1e-3)
    # The label follows the shipped card's rule, argmax(p_k * w_k), over the SR's probabilities.
    card = find_artefact("xray_classifier").card
    weights = dict(zip(XRAY_CLASSES, card.decision.weights, strict=True))
    assert image.label == max(
        image.probabilities, key=lambda k: image.probabilities[k] * weights[k]
    )
    assert sc.BurnedInAnnotation == "YES"

    # The SR carries the model's own numbers: ad-hoc classification of the file agrees.
    classify = stack.cli("classify", str(RG1), "--json")
    assert classify.returncode == 0, classify.stderr
    direct = json.loads(classify.stdout.splitlines()[0])
    assert direct["label"] == image.label
    for key, value in image.probabilities.items():
        assert direct["probabilities"][key] == pytest.approx(value, abs=1e-3)
    # Severity, per radiograph: both scores as numbers, the level as a code, as classify says.
    assert image.geographic_extent is not None and image.opacity is not None
    assert 0.0 <= image.geographic_extent <= 8.0 and 0.0 <= image.opacity <= 6.0
    assert direct["geographic_extent"] == pytest.approx(image.geographic_extent, abs=0.01)
    assert direct["opacity"] == pytest.approx(image.opacity, abs=0.01)
    thresholds = read_severity_card(artefact_directory("xray_severity") / CARD_FILE).levels
    assert image.severity_level == direct["severity_level"]
    assert image.severity_level == sum(image.geographic_extent >= t for t in thresholds.thresholds)

    [job] = by_study(stack.jobs(), study_uid)
    assert job["state"] == "done" and job["pipeline"] == "xray" and job["error"] is None
    assert job["deliveries_sent"] == job["deliveries_total"] == 2
    assert job["received_at"] and job["finished_at"]

    # The results make the study stable again: the routing script must not send them back.
    time.sleep(4)
    assert len(by_study(stack.jobs(), study_uid)) == 1
    metrics = stack.node.metrics()
    assert 'dicom_node_received_instances_total{modality="CR"} 1.0' in metrics
    assert 'dicom_node_jobs{state="done"} 1.0' in metrics
    assert "dicom_node_turnaround_seconds_count" in metrics


def test_dcmtk_echoscu_and_storescu_with_jpeg2000(make_stack: Any) -> None:
    stack = make_stack()
    port = str(stack.node_port)
    echo = subprocess.run(
        ["echoscu", "-aet", "ECHOSCU", "-aec", "AINODE", "127.0.0.1", port], capture_output=True
    )
    assert echo.returncode == 0, echo.stderr
    store = subprocess.run(
        ["storescu", "-xv", "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1", port, str(RG1_J2K)],
        capture_output=True,
        text=True,
    )
    assert store.returncode == 0, store.stderr
    study_uid = str(pydicom.dcmread(RG1_J2K, stop_before_pixels=True).StudyInstanceUID)
    jobs = stack.wait_jobs(lambda js: any(j["state"] == "done" for j in by_study(js, study_uid)))
    [job] = by_study(jobs, study_uid)
    assert job["pipeline"] == "xray"
    assert stack.wait_results(study_uid, {SR_STORAGE, SC_STORAGE})

    intruder = subprocess.run(
        ["echoscu", "-aet", "INTRUDER", "-aec", "AINODE", "127.0.0.1", port], capture_output=True
    )
    assert intruder.returncode != 0  # refused at association: not in DICOM_NODE_ALLOWED_AES
    wrong_called = subprocess.run(
        ["echoscu", "-aet", "ECHOSCU", "-aec", "NOTME", "127.0.0.1", port], capture_output=True
    )
    assert wrong_called.returncode != 0


def test_bad_input_is_refused_or_failed_and_the_node_keeps_serving(
    make_stack: Any, tmp_path: Path
) -> None:
    stack = make_stack()
    # 1. No pixel data: refused at C-STORE with a failure status, listed as rejected.
    no_pixels = small_cr()
    del no_pixels.PixelData
    assert c_store(stack, no_pixels) == 0xA900
    # 2. Truncated native pixel data: refused too (checked without decoding).
    truncated = small_cr()
    truncated.PixelData = truncated.PixelData[:100]
    path = tmp_path / "truncated.dcm"
    truncated.save_as(path, enforce_file_format=True)
    store = subprocess.run(
        [
            "storescu",
            "-v",
            "-aet",
            "STORESCU",
            "-aec",
            "AINODE",
            "127.0.0.1",
            str(stack.node_port),
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    assert store.returncode != 0
    assert "Error: CannotUnderstand" in store.stdout + store.stderr
    # 3. A JPEG 2000 stream cut short: accepted (compressed data is only decoded later), then
    #    the job fails with the decoder's message.
    broken = pydicom.dcmread(RG1_J2K)
    broken.StudyInstanceUID = pydicom.uid.generate_uid()
    broken.SOPInstanceUID = pydicom.uid.generate_uid()
    broken.file_meta.MediaStorageSOPInstanceUID = broken.SOPInstanceUID
    frame = next(generate_fragmented_frames(broken.PixelData, number_of_frames=1))
    whole = b"".join(frame)
    broken.PixelData = encapsulate([whole[: len(whole) // 20]])
    assert c_store(stack, broken) == 0x0000
    study_uid = str(broken.StudyInstanceUID)

    jobs = stack.wait_jobs(lambda js: any(j["state"] == "failed" for j in by_study(js, study_uid)))
    [failed] = by_study(jobs, study_uid)
    assert failed["error"]
    rejected = [j for j in jobs if j["state"] == "rejected"]
    assert len(rejected) == 2
    assert any("Pixel Data (7FE0,0010) is missing" in j["error"] for j in rejected)
    assert any("Pixel Data truncated" in j["error"] for j in rejected)
    # Logs name UIDs and AE titles, never the patient.
    assert str(chest_cr().PatientName) not in stack.node_log()

    echo = subprocess.run(
        ["echoscu", "-aet", "ECHOSCU", "-aec", "AINODE", "127.0.0.1", str(stack.node_port)],
        capture_output=True,
    )
    assert echo.returncode == 0
    assert stack.node.health()["status"] == "ok"


def test_kill_minus_9_while_queued_then_restart_gives_one_sr_per_study(make_stack: Any) -> None:
    stack = make_stack(worker_threads="0")  # intake only: jobs stay queued
    studies = []
    for _ in range(3):
        dataset = small_cr()
        studies.append(str(dataset.StudyInstanceUID))
        assert c_store(stack, dataset) == 0x0000
    stack.wait_jobs(lambda js: sum(j["state"] == "queued" for j in js) == 3)

    stack.node.kill9()
    stack.node.env["DICOM_NODE_WORKER_THREADS"] = "1"
    stack.node.start()

    stack.wait_jobs(lambda js: sum(j["state"] == "done" for j in js) == 3)
    for study_uid in studies:
        found = stack.wait_results(study_uid, {SR_STORAGE})
        assert len(found[SR_STORAGE]) == 1
    assert len(stack.jobs()) == 3


def test_pacs_down_results_are_retried_and_delivered_when_it_is_back(make_stack: Any) -> None:
    stack = make_stack(start_orthanc=False)
    dataset = small_cr()
    study_uid = str(dataset.StudyInstanceUID)
    assert c_store(stack, dataset) == 0x0000
    stack.wait_jobs(lambda js: any(j["state"] == "sending" for j in by_study(js, study_uid)))
    time.sleep(2.5)  # several failed attempts (backoff 0.5 s, doubling, capped at 2 s)
    [job] = by_study(stack.jobs(), study_uid)
    assert job["state"] == "sending" and job["deliveries_sent"] == 0
    assert 'dicom_node_deliveries_total{outcome="retry"}' in stack.node.metrics()

    stack.orthanc.start()
    stack.wait_results(study_uid, {SR_STORAGE, SC_STORAGE})
    stack.wait_jobs(lambda js: by_study(js, study_uid)[0]["state"] == "done")


def test_dead_letter_then_requeue_from_the_cli(make_stack: Any) -> None:
    stack = make_stack(start_orthanc=False, send_max_attempts="1")
    dataset = small_cr()
    study_uid = str(dataset.StudyInstanceUID)
    assert c_store(stack, dataset) == 0x0000
    jobs = stack.wait_jobs(lambda js: any(j["state"] == "dead" for j in by_study(js, study_uid)))
    assert "association failed" in by_study(jobs, study_uid)[0]["error"]

    stack.orthanc.start()
    requeue = stack.cli("requeue")
    assert requeue.returncode == 0 and "re-queued" in requeue.stdout
    stack.wait_results(study_uid, {SR_STORAGE, SC_STORAGE})
    stack.wait_jobs(lambda js: by_study(js, study_uid)[0]["state"] == "done")


def test_jobs_follow_tails_state_changes(make_stack: Any) -> None:
    stack = make_stack()
    follow = subprocess.Popen(
        [sys.executable, "-m", "dicom_node", "jobs", "--follow", "--json", "--interval", "0.1"],
        env=stack.node.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        dataset = small_cr()
        study_uid = str(dataset.StudyInstanceUID)
        assert c_store(stack, dataset) == 0x0000
        states = []
        assert follow.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = follow.stdout.readline()
            row = json.loads(line)
            if row["study_instance_uid"] == study_uid:
                states.append(row["state"])
                if row["state"] == "done":
                    break
        assert states[0] == "received" and states[-1] == "done"
        assert len(states) >= 3  # at least received, one intermediate state, done
    finally:
        follow.terminate()
        follow.wait(timeout=10)

    table = stack.cli("jobs")
    assert table.returncode == 0
    assert "done" in table.stdout and study_uid in table.stdout


def test_study_with_a_late_instance_gets_a_new_result_version(make_stack: Any) -> None:
    stack = make_stack()
    first = small_cr()
    study_uid = str(first.StudyInstanceUID)
    assert c_store(stack, first) == 0x0000
    stack.wait_jobs(lambda js: any(j["state"] == "done" for j in by_study(js, study_uid)))
    late = small_cr()
    late.StudyInstanceUID = study_uid
    assert c_store(stack, late) == 0x0000
    jobs = stack.wait_jobs(
        lambda js: [j["state"] for j in by_study(js, study_uid)] == ["done", "done"]
    )
    assert [j["version"] for j in by_study(jobs, study_uid)] == [1, 2]
    found = stack.wait_results(study_uid, {SR_STORAGE})
    deadline = time.monotonic() + 30
    while len(found[SR_STORAGE]) < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
        found = stack.results_in_orthanc(study_uid, {SR_STORAGE})
    reports = sorted(found[SR_STORAGE], key=lambda ds: len(read_xray_report(ds)))
    assert [len(read_xray_report(ds)) for ds in reports] == [1, 2]
    assert "v2 replaces v1" in reports[1].SeriesDescription
    assert "replaces" not in reports[0].SeriesDescription

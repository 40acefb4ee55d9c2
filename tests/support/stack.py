"""One Orthanc and one node wired to each other, driven as an admin and a modality would."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom import AE

from tests.support.node import NodeProcess, run_cli
from tests.support.orthanc import OrthancServer

SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass
class Stack:
    """One Orthanc and one node wired to each other."""

    workdir: Path
    orthanc: OrthancServer
    node: NodeProcess
    node_port: int
    env: dict[str, str] = field(default_factory=dict)

    def jobs(self) -> list[dict[str, Any]]:
        """``dicom-node jobs --json`` run as an admin would (a separate process)."""
        result = self.cli("jobs", "--json", "--limit", "1000")
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.node.env, *args)

    def wait_jobs(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 120
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        jobs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            jobs = self.jobs()
            if predicate(jobs):
                return jobs
            time.sleep(0.3)
        raise AssertionError(f"job log never matched; last: {jobs}\n{self.node_log()}")

    def results_in_orthanc(self, study_uid: str, sop_classes: set[str]) -> dict[str, list[Dataset]]:
        """Our result objects in the study, by SOP Class UID (sent by the node's AE)."""
        return self.orthanc.results_from(study_uid, self.env["DICOM_NODE_AE_TITLE"], sop_classes)

    def wait_results(
        self, study_uid: str, sop_classes: set[str], timeout: float = 120
    ) -> dict[str, list[Dataset]]:
        try:
            return self.orthanc.wait_results(
                study_uid, self.env["DICOM_NODE_AE_TITLE"], sop_classes, timeout
            )
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.node_log()}") from None

    def c_store(self, dataset: Dataset, calling_ae: str = "MODALITY") -> int:
        """Send one data set to the node directly, as a modality would; returns the status."""
        ae = AE(ae_title=calling_ae)
        ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", self.node_port, ae_title=self.env["DICOM_NODE_AE_TITLE"])
        assert assoc.is_established, self.node_log()
        status = assoc.send_c_store(dataset)
        assoc.release()
        return int(status.Status)

    def node_log(self) -> str:
        return self.node.log_path.read_text()[-6000:] if self.node.log_path.exists() else ""

"""A node SCP started in-process on loopback, and a pynetdicom modality that talks to it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.admin.metrics import Metrics
from dicom_node.config import Settings
from dicom_node.intake.filing import Intake
from dicom_node.intake.scp import start_scp
from dicom_node.joblog import JobLog
from dicom_node.joblog.records import RecordOutcome
from tests.support.net import free_port


@dataclasses.dataclass
class RunningScp:
    settings: Settings
    joblog: JobLog
    metrics: Metrics
    armed: list[RecordOutcome]


def start_scp_in_process(tmp_path: Path, **overrides: object) -> Iterator[RunningScp]:
    values: dict[str, object] = {"fsync": False, "min_free_disk_mb": 0, **overrides}
    settings = Settings(data_dir=tmp_path / "data", port=free_port(), **values)  # type: ignore[arg-type]
    joblog = JobLog.open(settings.database_path)
    metrics = Metrics()
    armed: list[RecordOutcome] = []
    server = start_scp(
        settings, Intake(settings, joblog.intake, metrics, lambda o, _a: armed.append(o))
    )
    try:
        yield RunningScp(settings, joblog, metrics, armed)
    finally:
        server.shutdown()


def send(scp: RunningScp, dataset: Dataset, calling_ae: str = "MODALITY") -> int:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(dataset.SOPClassUID)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.settings.port, ae_title=scp.settings.ae_title)
    assert assoc.is_established
    status = assoc.send_c_store(dataset)
    assoc.release()
    return int(status.Status)


def echo(scp: RunningScp) -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.settings.port, ae_title=scp.settings.ae_title)
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status)

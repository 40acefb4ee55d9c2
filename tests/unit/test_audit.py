"""The audit trail (JSON lines, rotated, private), what the sender and the CLI write to it,
and the TLS settings errors that need no certificate to provoke."""

from __future__ import annotations

import datetime as dt
import json
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dicom_node.admin.audit import AuditLog, audit_path
from dicom_node.admin.metrics import Metrics
from dicom_node.cli.main import main
from dicom_node.config import PacsAddress, Settings
from dicom_node.delivery.sender import ResultSender, StoreResult
from dicom_node.errors import ConfigError
from dicom_node.intake.admission import Gate
from dicom_node.joblog import JobLog
from dicom_node.joblog.records import DueDelivery, SettledJob
from tests.support.factories import small_cr


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_default_path_is_in_the_data_dir(tmp_path: Path) -> None:
    assert audit_path(Settings(data_dir=tmp_path)) == tmp_path / "audit.jsonl"
    assert audit_path(Settings(audit_log=tmp_path / "x.jsonl")) == tmp_path / "x.jsonl"


def test_instances_are_gathered_per_association_and_study(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    first, second = object(), object()  # stand-ins for two pynetdicom associations

    def store(assoc: object, prefix: str) -> None:
        for index in range(50):
            study = f"1.2.{index % 2}"
            status = 0xA900 if index == 7 else (0xB007 if index == 8 else 0)
            audit.instance(assoc, study, f"{prefix}.{index}", status)

    threads = [
        threading.Thread(target=store, args=(first, "1.9")),
        threading.Thread(target=store, args=(second, "1.8")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert audit.association_ended(first, "released", association="a1", peer="h:1") == 50
    audit.close()
    written = lines(tmp_path / "audit.jsonl")
    assert [e["event"] for e in written] == ["instances", "instances", "association_end"]
    odd = next(e for e in written if e.get("study_uid") == "1.2.1")
    assert odd["stored"] == 24 and odd["refused"] == 1
    assert odd["refused_sop_instance_uids"] == ["1.9.7"]
    assert odd["statuses"] == {"0x0000": 24, "0xA900": 1}
    even = next(e for e in written if e.get("study_uid") == "1.2.0")
    assert even["stored"] == 25  # 0xB007 (a warning) means stored
    assert even["statuses"] == {"0x0000": 24, "0xB007": 1}
    assert all(uid.startswith("1.9.") for uid in odd["sop_instance_uids"])
    end = written[-1]
    assert end["outcome"] == "released" and end["instances"] == 50 and end["studies"] == 2
    assert dt.datetime.fromisoformat(end["time"].replace("Z", "+00:00")).tzinfo is not None


def test_file_is_private_and_rotates(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit._handler.maxBytes = 2000  # rotation is the standard handler's; make it quick
    for index in range(100):
        audit.admin("test", index=index)
    audit.close()
    files = sorted(tmp_path.glob("audit.jsonl*"))
    assert [f.name for f in files] == [
        "audit.jsonl",
        *(f"audit.jsonl.{n}" for n in range(1, 6)),
    ]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert all(e["event"] == "admin" for e in lines(path))


def test_unwritable_audit_log_stops_the_start(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"^audit_log .*cannot write"):
        AuditLog.for_settings(Settings(audit_log=blocker / "audit.jsonl"))


class _OneDelivery:
    """Just enough of the job log's delivery role for one send round."""

    def __init__(self, path: Path) -> None:
        self.pending = [DueDelivery(1, 7, "1.2.3.4", str(path), "PACS@127.0.0.1:104", 0)]

    def due(self, hold_seconds: float | None = None) -> list[DueDelivery]:
        due, self.pending = self.pending, []
        return due

    def sent(self, delivery_id: int, status: int) -> None:
        pass

    def failed(self, *args: Any) -> None:
        pass

    def settle(self, job_id: int) -> SettledJob:
        now = dt.datetime.now(dt.UTC)
        return SettledJob(job_id, "done", "xray", now, now)


class _Transport:
    def send(self, address: PacsAddress, files: Sequence[Path]) -> list[StoreResult]:
        return [StoreResult(0x0000) for _ in files]


def test_sender_audits_each_delivery(tmp_path: Path) -> None:
    result = small_cr()
    path = tmp_path / "result.dcm"
    result.save_as(path, enforce_file_format=True)
    settings = Settings(data_dir=tmp_path)
    audit = AuditLog.for_settings(settings)
    sender = ResultSender(
        settings,
        _OneDelivery(path),  # type: ignore[arg-type]
        Metrics(),
        _Transport(),
        audit,
    )
    assert sender.send_due()
    audit.close()
    [line] = lines(audit.path)
    assert line["event"] == "delivery" and line["job_id"] == 7
    assert line["study_uid"] == str(result.StudyInstanceUID)
    assert line["destination"] == "PACS@127.0.0.1:104" and line["tls"] is False
    assert line["sop_instance_uids"] == ["1.2.3.4"] and line["statuses"] == ["0x0000"]
    assert line["outcome"] == "sent"


def test_requeue_is_audited_and_config_names_the_production_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path))
    JobLog.open(tmp_path / "jobs.sqlite").close()
    assert main(["requeue", "41"]) == 1  # unknown job: still an admin action worth a line
    [line] = lines(tmp_path / "audit.jsonl")
    assert line["event"] == "admin" and line["action"] == "requeue"
    assert line["requested"] == [41] and line["requeued"] == []
    assert line["user"] and line["pid"]

    capsys.readouterr()
    assert main(["config"]) == 0
    err = capsys.readouterr().err
    assert "production needs ALLOWED_AES (DICOM_NODE_ALLOWED_AES)" in err
    assert "DICOM TLS is off" in err
    monkeypatch.setenv("DICOM_NODE_ALLOWED_AES", "PACS01")
    assert main(["config"]) == 0
    assert "ALLOWED_AES" not in capsys.readouterr().err


def test_missing_or_non_pem_certificate_names_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=r"^tls_cert \(DICOM_NODE_TLS_CERT\): cannot read"):
        Gate.from_settings(Settings(tls_cert=missing, tls_key=missing))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"^tls_cert .*not a PEM certificate"):
        Gate.from_settings(Settings(tls_cert=garbage, tls_key=garbage))
    with pytest.raises(ConfigError, match=r"^tls_cert .*not a PEM certificate"):
        main_settings = Settings(tls_cert=garbage, tls_key=garbage, pacs_tls=True)
        ResultSender(main_settings, _OneDelivery(garbage), Metrics())  # type: ignore[arg-type]

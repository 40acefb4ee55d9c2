"""The dicom-node command in-process: config errors, config output, jobs and requeue."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.cli.main import main
from dicom_node.joblog import JobLog
from dicom_node.joblog.records import InstanceRecord
from dicom_node.joblog.schema import utcnow
from tests.support.net import free_port


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path))
    return tmp_path


def test_invalid_configuration_exits_2_naming_the_setting(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DICOM_NODE_PACS", "not-an-address")
    assert main(["config"]) == 2
    assert "DICOM_NODE_PACS" in capsys.readouterr().err


def test_config_prints_effective_settings(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["ae_title"] == "AINODE" and shown["data_dir"] == str(data_dir)


def test_jobs_without_a_log_says_where_it_looked(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["jobs"]) == 1
    assert "no job log" in capsys.readouterr().err


def test_jobs_table_json_and_requeue(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    joblog = JobLog.open(data_dir / "jobs.sqlite")
    outcome = joblog.intake.record_instance(
        InstanceRecord(
            "1.9",
            "1.9.1",
            "1.9.1.1",
            "1.2.840.10008.5.1.4.1.1.1",
            "1.2.840.10008.1.2.1",
            "CR",
            "CHEST",
            None,
            None,
            None,
            "MODALITY",
            "/x.dcm",
            1,
        )
    )
    [instance] = joblog.assembly.study_instances(outcome.job_id)
    joblog.assembly.complete_job(outcome.job_id, "xray", [instance.id], None, utcnow())
    claimed = joblog.queue.claim_next("w1", 60.0)
    assert claimed is not None
    joblog.queue.fail(claimed.id, "ValueError: cannot decode")

    assert main(["jobs"]) == 0
    table = capsys.readouterr().out
    assert "failed" in table and "1.9" in table and "cannot decode" in table
    assert main(["jobs", "--json"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["state"] == "failed" and row["pipeline"] == "xray"
    assert row["error"] == "ValueError: cannot decode"
    assert row["received_at"].endswith("Z") and row["finished_at"]
    assert row["summary"] is None

    assert main(["requeue", str(claimed.id)]) == 0
    assert f"job {claimed.id} re-queued" in capsys.readouterr().out
    assert main(["requeue", "999"]) == 1


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["send", "missing.dcm"], "dicom-node send: missing.dcm: no such file or folder"),
        (["send", "notes.txt"], "dicom-node send: notes.txt: not a DICOM file"),
        (["send", "empty-folder"], "dicom-node send: empty-folder: no DICOM files in this folder"),
        (
            ["echo", "--to", "127.0.0.1:4242"],
            "dicom-node echo: --to: expected AE@host:port, got '127.0.0.1:4242'",
        ),
    ],
)
def test_command_line_mistakes_get_one_line_and_exit_2(
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    said: str,
) -> None:
    monkeypatch.chdir(data_dir)
    (data_dir / "notes.txt").write_text("not DICOM")
    (data_dir / "empty-folder").mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and len(err.strip().splitlines()) == 1, err


def test_global_options_work_after_the_command_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    assert main(["--data-dir", str(before), "config"]) == 0
    assert json.loads(capsys.readouterr().out)["data_dir"] == str(before)
    assert main(["config", "--data-dir", str(after)]) == 0
    assert json.loads(capsys.readouterr().out)["data_dir"] == str(after)
    assert main(["--data-dir", str(before), "jobs"]) == 1  # given before: kept, not reset
    assert str(before) in capsys.readouterr().err


NODE = (sys.executable, "-m", "dicom_node")


def test_a_busy_port_is_named_with_its_setting(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        serve = ["serve", "--host", "127.0.0.1", "--port", str(port)]
        done = subprocess.run(
            [*NODE, "--data-dir", str(tmp_path), *serve, "--http-port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert (
        f"cannot start: port {port} on 127.0.0.1 is already in use (port, DICOM_NODE_PORT)"
        in done.stderr
    ), done.stderr[-2000:]


def test_db_check_in_an_empty_folder_says_so_and_creates_nothing(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "check"]) == 1
    assert "no job log at" in capsys.readouterr().err
    assert list(data_dir.iterdir()) == []


def test_jobs_lines_are_cut_say_utc_and_json_holds_the_summary_object(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    joblog = JobLog.open(data_dir / "jobs.sqlite")
    record = InstanceRecord(
        "1.8", "1.8.1", "1.8.1.1", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.1", "CR",
        "CHEST", None, None, None, "MODALITY", "/y.dcm", 1,
    )  # fmt: skip
    outcome = joblog.intake.record_instance(record)
    [instance] = joblog.assembly.study_instances(outcome.job_id)
    joblog.assembly.complete_job(outcome.job_id, "xray", [instance.id], None, utcnow())
    claimed = joblog.queue.claim_next("w1", 60.0)
    assert claimed is not None
    summary = {"label": "covid", "note": "x" * 400}
    joblog.queue.processed(claimed.id, "m", "1", json.dumps(summary), [], None, "w1")

    assert main(["jobs"]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert "UPDATED (UTC)" in header
    assert len(line) == 160 and line.endswith("...") and "label=covid" in line
    assert main(["jobs", "--wide"]) == 0
    assert len(capsys.readouterr().out.splitlines()[1]) > 400
    assert main(["jobs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"] == summary

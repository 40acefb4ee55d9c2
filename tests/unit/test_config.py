from pathlib import Path

import pytest

from dicom_node.config import (
    ConfigError,
    DicomWebAddress,
    PacsAddress,
    load_settings,
    parse_destination,
)


def test_defaults_match_the_documented_values() -> None:
    settings = load_settings(environ={})
    assert settings.ae_title == "AINODE"
    assert settings.port == 11112
    assert settings.pacs is None  # no demo value in production defaults: a site names its PACS
    assert settings.quiet_seconds("CR") < settings.quiet_seconds("CT")


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        'ae_title = "FROMFILE"\nport = 11000\nallowed_aes = ["PACS1"]\n'
        "[quiet_seconds_by_modality]\nCR = 2\n"
    )
    env = {
        "DICOM_NODE_PORT": "12000",
        "DICOM_NODE_ALLOWED_AES": "ORTHANC, PACS2",
        "DICOM_NODE_PACS": "MYPACS@pacs.local:104",
        "DICOM_NODE_DATA_DIR": str(tmp_path / "data"),
    }
    settings = load_settings(config, environ=env, overrides={"port": "13000"})
    assert settings.ae_title == "FROMFILE"
    assert settings.port == 13000
    assert settings.allowed_aes == ("ORTHANC", "PACS2")
    assert settings.pacs == PacsAddress("MYPACS", "pacs.local", 104)
    assert settings.data_dir == tmp_path / "data"
    assert settings.quiet_seconds("CR") == 2
    assert settings.database_path == tmp_path / "data" / "jobs.sqlite"


def test_release_grace_and_pdu_size_are_configurable() -> None:
    defaults = load_settings(environ={})
    assert defaults.release_grace_seconds == 1.0 and defaults.max_pdu_bytes == 131072
    settings = load_settings(
        environ={"DICOM_NODE_RELEASE_GRACE_SECONDS": "", "DICOM_NODE_MAX_PDU_BYTES": "0"}
    )
    assert settings.release_grace_seconds is None  # empty: the quiet period decides
    assert settings.max_pdu_bytes == 0  # unlimited


def test_the_interrupted_study_hold_is_minutes_by_default_and_configurable(
    tmp_path: Path,
) -> None:
    assert load_settings(environ={}).interrupted_study_hold_seconds == 600.0
    config = tmp_path / "node.toml"
    config.write_text("interrupted_study_hold_seconds = 120\n")
    assert load_settings(config, environ={}).interrupted_study_hold_seconds == 120.0
    env = {"DICOM_NODE_INTERRUPTED_STUDY_HOLD_SECONDS": "3"}
    assert load_settings(config, environ=env).interrupted_study_hold_seconds == 3.0


def test_study_quiet_seconds_applies_to_every_modality() -> None:
    settings = load_settings(environ={"DICOM_NODE_STUDY_QUIET_SECONDS": "0.5"})
    assert settings.quiet_seconds("CT") == settings.quiet_seconds("CR") == 0.5


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DICOM_NODE_PORT": "70000"}, "DICOM_NODE_PORT"),
        ({"DICOM_NODE_PORT": "eleven"}, "DICOM_NODE_PORT"),
        ({"DICOM_NODE_AE_TITLE": "A_TITLE_FAR_TOO_LONG"}, "DICOM_NODE_AE_TITLE"),
        ({"DICOM_NODE_PACS": "orthanc:4242"}, "DICOM_NODE_PACS"),
        ({"DICOM_NODE_ALLOWED_AES": "OK,BAD\\AE"}, "DICOM_NODE_ALLOWED_AES"),
        ({"DICOM_NODE_STUDY_QUIET_SECONDS": "-1"}, "DICOM_NODE_STUDY_QUIET_SECONDS"),
        ({"DICOM_NODE_FSYNC": "maybe"}, "DICOM_NODE_FSYNC"),
        ({"DICOM_NODE_RELEASE_GRACE_SECONDS": "-0.5"}, "DICOM_NODE_RELEASE_GRACE_SECONDS"),
        ({"DICOM_NODE_INTERRUPTED_STUDY_HOLD_SECONDS": "-1"}, "INTERRUPTED_STUDY_HOLD_SECONDS"),
        ({"DICOM_NODE_INTERRUPTED_STUDY_HOLD_SECONDS": "nan"}, "INTERRUPTED_STUDY_HOLD_SECONDS"),
        ({"DICOM_NODE_INTERRUPTED_STUDY_HOLD_SECONDS": "soon"}, "INTERRUPTED_STUDY_HOLD_SECONDS"),
        ({"DICOM_NODE_MAX_PDU_BYTES": "1024"}, "DICOM_NODE_MAX_PDU_BYTES"),
    ],
)
def test_invalid_values_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(environ=env)


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("ae_titel = 'TYPO'\n")
    with pytest.raises(ConfigError, match="ae_titel"):
        load_settings(config, environ={})


def test_pacs_can_be_switched_off() -> None:
    assert load_settings(environ={"DICOM_NODE_PACS": "none"}).pacs is None


def test_pacs_can_be_a_dicomweb_root_for_stow_rs() -> None:
    url = "dicomweb+http://pacs.local:8042/dicom-web/"
    pacs = load_settings(environ={"DICOM_NODE_PACS": url}).pacs
    assert pacs == DicomWebAddress("http://pacs.local:8042/dicom-web")
    assert str(pacs) == url.rstrip("/")  # what the job log records as the destination
    assert parse_destination(str(pacs)) == pacs


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("dicomweb+ftp://pacs/dicom-web", "expected dicomweb"),
        ("dicomweb+http:///dicom-web", "expected dicomweb"),
        ("dicomweb+https://user:secret@pacs/dicom-web", "no credentials"),
        ("dicomweb+http://pacs/" + "x" * 200, "longer than 128"),
    ],
)
def test_bad_dicomweb_pacs_names_the_setting(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"DICOM_NODE_PACS.*{problem}"):
        load_settings(environ={"DICOM_NODE_PACS": value})


def test_stow_rs_intake_is_off_by_default_and_takes_a_port() -> None:
    assert load_settings(environ={}).dicomweb_port is None
    assert load_settings(environ={"DICOM_NODE_DICOMWEB_PORT": "8111"}).dicomweb_port == 8111
    with pytest.raises(ConfigError, match="DICOM_NODE_DICOMWEB_PORT"):
        load_settings(environ={"DICOM_NODE_DICOMWEB_PORT": "70000"})
    assert load_settings(environ={}).stow_max_parts_per_request == 1000
    with pytest.raises(ConfigError, match="DICOM_NODE_STOW_MAX_PARTS_PER_REQUEST"):
        load_settings(environ={"DICOM_NODE_STOW_MAX_PARTS_PER_REQUEST": "0"})


def test_roles_and_a_shared_job_log() -> None:
    defaults = load_settings(environ={})
    assert defaults.roles == ("intake", "assembly", "worker", "sender")
    assert not defaults.shared_joblog  # one process on its own SQLite file
    assert defaults.joblog_url == f"sqlite:///{defaults.data_dir / 'jobs.sqlite'}"
    worker = load_settings(environ={"DICOM_NODE_ROLES": "Worker"})
    assert worker.roles == ("worker",) and worker.shared_joblog
    url = "postgresql+psycopg://node:s3cret@db.example/dicomnode"
    shared = load_settings(environ={"DICOM_NODE_DATABASE_URL": url})
    assert shared.joblog_url == url and shared.shared_joblog
    assert shared.describe()["database_url"] == "postgresql+psycopg://node:***@db.example/dicomnode"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ROLES", "intake,gpu", "got gpu"),
        ("ROLES", ",", "comma-separated subset"),
        ("DATABASE_URL", "mysql://db/x", r"postgresql\+psycopg"),
        ("WORKER_LEASE_SECONDS", "1", ">= 3"),
        ("JOB_MAX_ATTEMPTS", "0", ">= 1"),
    ],
)
def test_bad_scale_out_settings_are_refused(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        load_settings(environ={f"DICOM_NODE_{name}": value})
    assert f"DICOM_NODE_{name}" in str(raised.value)

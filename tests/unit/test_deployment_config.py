"""docker-compose, the Orthanc config, the Lua script and the node's defaults must agree."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicom_node.config import PacsAddress, load_settings
from dicom_node.errors import ConfigError
from dicom_node.web import admin_policy

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _orthanc() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "orthanc" / "orthanc.json").read_text())
    return data


def test_orthanc_sends_to_the_node_with_its_default_ae_and_port() -> None:
    defaults = load_settings(environ={})
    node_env = _compose()["services"]["dicom-node"]["environment"]
    target = _orthanc()["DicomModalities"]["ainode"]
    assert target["AET"] == node_env["DICOM_NODE_AE_TITLE"] == defaults.ae_title
    assert target["Port"] == int(node_env["DICOM_NODE_PORT"]) == defaults.port
    assert target["Host"] == "dicom-node"  # the compose service name
    assert "dicom-node" in _compose()["services"]


def test_node_sends_results_to_orthanc_and_accepts_only_it() -> None:
    orthanc = _orthanc()
    node_env = _compose()["services"]["dicom-node"]["environment"]
    pacs = PacsAddress.parse(node_env["DICOM_NODE_PACS"])
    assert pacs.ae_title == orthanc["DicomAet"]
    assert pacs.port == orthanc["DicomPort"]
    assert pacs.host == "orthanc" and "orthanc" in _compose()["services"]
    assert node_env["DICOM_NODE_ALLOWED_AES"].split(",") == [orthanc["DicomAet"]]


def test_compose_mounts_the_config_and_the_routing_script_orthanc_loads() -> None:
    volumes = _compose()["services"]["orthanc"]["volumes"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in volumes if v.startswith("./")}
    assert mounted["/etc/orthanc/orthanc.json"] == "./orthanc/orthanc.json"
    [script] = _orthanc()["LuaScripts"]
    assert mounted[script] == "./orthanc/route_to_node.lua"
    assert (ROOT / "orthanc" / "route_to_node.lua").is_file()


def test_lua_script_targets_the_modality_key_of_the_config() -> None:
    lua = (ROOT / "orthanc" / "route_to_node.lua").read_text()
    assert "local NODE = 'ainode'" in lua
    assert "ForwardedToAINode" in _orthanc()["UserMetadata"]
    assert "ForwardedToAINode" in lua


def test_ports_published_by_compose_match_the_defaults() -> None:
    defaults = load_settings(environ={})
    node = _compose()["services"]["dicom-node"]
    assert str(defaults.http_port) == node["environment"]["DICOM_NODE_HTTP_PORT"]
    assert f"127.0.0.1:{defaults.http_port}:{defaults.http_port}" in node["ports"]
    orthanc_ports = _compose()["services"]["orthanc"]["ports"]
    assert f"{_orthanc()['DicomPort']}:{_orthanc()['DicomPort']}" in orthanc_ports
    assert f"127.0.0.1:{_orthanc()['HttpPort']}:{_orthanc()['HttpPort']}" in orthanc_ports


def test_compose_gateway_and_workers_share_the_job_log_and_the_data_volume() -> None:
    services = _compose()["services"]
    gateway, worker, migrate = services["dicom-node"], services["worker"], services["migrate"]
    url = gateway["environment"]["DICOM_NODE_DATABASE_URL"]
    assert url == worker["environment"]["DICOM_NODE_DATABASE_URL"]
    assert url == migrate["environment"]["DICOM_NODE_DATABASE_URL"]
    database = services["postgres"]["environment"]
    assert url.endswith(f"@postgres:5432/{database['POSTGRES_DB']}")
    assert f"{database['POSTGRES_USER']}:{database['POSTGRES_PASSWORD']}@" in url
    assert gateway["volumes"] == worker["volumes"] == ["node-data:/data"]
    assert migrate["command"] == ["db", "upgrade"]
    for service in (gateway, worker):
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    roles = {}
    for name, service in (("gateway", gateway), ("worker", worker)):
        command = service["command"]
        roles[name] = load_settings(
            environ=service["environment"],
            overrides={"roles": command[command.index("--roles") + 1]},
        ).roles
    assert set(roles["gateway"]) | set(roles["worker"]) == {
        "intake",
        "assembly",
        "worker",
        "sender",
    }
    assert "worker" not in roles["gateway"]


def _image_environment() -> dict[str, str]:
    """The ``ENV`` settings of the Dockerfile (what every container starts with)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[len("ENV ") :]):
                name, _, value = item.partition("=")
                values[name] = value
    return values


def test_compose_node_services_start_with_the_images_admin_port_off_loopback() -> None:
    image = _image_environment()
    assert image["DICOM_NODE_HTTP_HOST"] == "0.0.0.0"  # published on the host's loopback only
    with pytest.raises(ConfigError, match=r"^http_host .*allow_insecure_http"):
        admin_policy(load_settings(environ=image))  # the image alone refuses to start
    for name in ("dicom-node", "worker"):
        environment = {**image, **_compose()["services"][name]["environment"]}
        admin_policy(load_settings(environ=environment))  # the demo's explicit opt-out

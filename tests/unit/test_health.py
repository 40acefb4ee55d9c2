"""``/healthz`` says degraded whenever stores would be refused, and never waits for a model."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dicom_node.app import Node
from dicom_node.config import Settings
from dicom_node.registry import LoadedPipeline, PipelineRegistry
from dicom_node.storage import atomic_write
from tests.support.net import free_port


def _node(tmp_path: Path, **overrides: object) -> Node:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "port": free_port(),
        "http_port": free_port(),
        "pacs": None,
        "preload_models": False,
        "min_free_disk_mb": 0,
        **overrides,
    }
    return Node(Settings(**values))  # type: ignore[arg-type]


def _healthz(node: Node) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{node.settings.http_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_healthy_node_is_ok_then_degraded_by_the_disk_guard_and_a_locked_job_log(
    tmp_path: Path,
) -> None:
    node = _node(tmp_path)
    node.start()
    try:
        assert _healthz(node)[0] == 200 and _healthz(node)[1]["status"] == "ok"
        holder = sqlite3.connect(node.settings.database_path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            code, body = _healthz(node)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert code == 503 and "the job log is locked" in str(body["problems"])
    finally:
        node.stop()
    full = _node(tmp_path / "full", min_free_disk_mb=10**9)
    full.start()
    try:
        code, body = _healthz(full)
        assert code == 503 and "below min_free_disk_mb" in str(body["problems"])
    finally:
        full.stop()


def test_health_answers_while_a_model_is_loading(tmp_path: Path) -> None:
    release = threading.Event()

    def slow_factory() -> LoadedPipeline:
        release.wait(10)
        raise RuntimeError("never mind")

    registry = PipelineRegistry(factories={"slow": slow_factory})
    node = Node(
        Settings(data_dir=tmp_path, port=free_port(), http_port=free_port(), pacs=None),
        pipelines=registry,
    )

    def load() -> None:
        with pytest.raises(RuntimeError):
            registry.get("slow")

    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(0.2)
        started = time.monotonic()
        assert registry.loaded() == []
        node.health()
        assert time.monotonic() - started < 2
    finally:
        release.set()
        loader.join()
        node.joblog.close()


def test_idle_admin_connections_are_closed(tmp_path: Path) -> None:
    node = _node(tmp_path, http_header_timeout_seconds=0.5)
    node.admin.start()
    try:
        idle = socket.create_connection(("127.0.0.1", node.settings.http_port))
        idle.settimeout(5)
        assert idle.recv(1) == b""  # the server hung up on the silent client
        idle.close()
    finally:
        node.admin.stop()
        node.joblog.close()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_admin_http_answers_other_methods_with_405_and_allow(tmp_path: Path, method: str) -> None:
    node = _node(tmp_path)
    node.admin.start()
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{node.settings.http_port}/healthz", data=b"{}", method=method
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 405 and refused.value.headers["Allow"] == "GET"
    finally:
        node.admin.stop()
        node.joblog.close()


def test_partial_files_of_a_crash_are_removed_at_start(tmp_path: Path) -> None:
    node = _node(tmp_path)
    leftover = node.settings.inbox_dir / "1.2" / ".tmp-abc.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    kept = node.settings.inbox_dir / "1.2" / "1.2.3.dcm"
    atomic_write(kept, b"whole", fsync=False)
    node.start()
    node.stop()
    assert not leftover.exists() and kept.exists()


def test_a_worker_only_node_is_healthy_without_a_dicom_port(tmp_path: Path) -> None:
    node = _node(tmp_path, roles=("worker",), worker_name="gpu-7")
    node.start()
    try:
        code, body = _healthz(node)
        assert code == 200 and body["status"] == "ok", body
        assert body["roles"] == ["worker"] and body["worker_name"] == "gpu-7"
        assert body["sender"] == "off" and body["worker"] == "running"
        assert body["dicom_port"] is None
        with socket.socket() as probe:  # nothing listens on the DICOM port
            assert probe.connect_ex(("127.0.0.1", node.settings.port)) != 0
    finally:
        node.stop()

"""Real Orthanc (Debian package) and the node as a subprocess, on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import free_port
from tests.support.node import NodeProcess
from tests.support.nodecheck import SandboxNode
from tests.support.orthanc import NodeTarget, OrthancServer
from tests.support.stack import Stack
from tests.support.viewer import ViewerTools, install_viewer, missing_tools


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Build a stack; keyword arguments become ``DICOM_NODE_*`` settings of the node, and
    ``orthanc_options`` go to ``OrthancServer`` (``routing``, ``dicomweb_servers``...)."""
    stacks: list[Stack] = []

    def build(
        start_orthanc: bool = True,
        start_node: bool = True,
        orthanc_options: dict[str, Any] | None = None,
        **settings: str,
    ) -> Stack:
        node_port = free_port()
        orthanc_dicom = free_port()
        workdir = tmp_path / f"stack{len(stacks)}"
        workdir.mkdir()
        orthanc = OrthancServer(
            workdir / "orthanc",
            http_port=free_port(),
            dicom_port=orthanc_dicom,
            node=NodeTarget("AINODE", "127.0.0.1", node_port),
            stable_age=1,
            **(orthanc_options or {}),
        )
        env = {
            "DICOM_NODE_AE_TITLE": "AINODE",
            "DICOM_NODE_HOST": "127.0.0.1",
            "DICOM_NODE_PORT": str(node_port),
            "DICOM_NODE_HTTP_PORT": str(free_port()),
            "DICOM_NODE_PACS": f"ORTHANC@127.0.0.1:{orthanc_dicom}",
            "DICOM_NODE_ALLOWED_AES": "ORTHANC,STORESCU,ECHOSCU,MODALITY",
            "DICOM_NODE_STUDY_QUIET_SECONDS": "1",
            "DICOM_NODE_SEND_BACKOFF_SECONDS": "0.5",
            "DICOM_NODE_SEND_BACKOFF_MAX_SECONDS": "2",
            "DICOM_NODE_MIN_FREE_DISK_MB": "100",
            "DICOM_NODE_FSYNC": "false",
        }
        env.update({f"DICOM_NODE_{k.upper()}": str(v) for k, v in settings.items()})
        node = NodeProcess(workdir / "node-data", env, workdir / "node.log")
        stack = Stack(workdir, orthanc, node, node_port, env)
        stacks.append(stack)
        if start_orthanc:
            orthanc.start()
        if start_node:
            node.start()
        return stack

    yield build
    for stack in stacks:
        stack.node.stop()
        stack.orthanc.stop()


@pytest.fixture
def sandbox() -> Iterator[list[SandboxNode]]:
    """Nodes a test started (``tests.support.nodecheck.start_node``); all stopped at the end."""
    nodes: list[SandboxNode] = []
    yield nodes
    for node in nodes:
        node.stop()


@pytest.fixture(scope="session")
def viewer_tools() -> ViewerTools:
    """OHIF and playwright-core from the npm cache (fetched on first use; CI has npm)."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: run scripts/install-system-deps.sh")
    return install_viewer()


@pytest.fixture
def browser_artefacts(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where a browser test leaves its screenshots: ``$DICOM_NODE_BROWSER_ARTEFACTS/<test>``
    (e.g. a CI artefact folder) or the test's tmp dir."""
    root = os.environ.get("DICOM_NODE_BROWSER_ARTEFACTS")
    folder = Path(root) / request.node.name if root else tmp_path / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"browser artefacts (screenshots): {folder}")
    return folder

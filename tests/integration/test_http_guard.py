"""The node's HTTP ports (admin, STOW-RS) under slow and unauthenticated clients: header
slowloris on both ports, trickling STOW-RS uploads, a fast large upload, HTTPS with client
certificates (``openssl``-made PKI), bearer tokens, and the refusal to start a port off
loopback without TLS and authentication."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.app import Node
from dicom_node.config import Settings
from tests.support.factories import small_cr
from tests.support.net import free_port
from tests.support.node import run_cli
from tests.support.nodecheck import JobLogReader, SandboxNode, node_env, start_node
from tests.support.pki import Pki, make_pki

BOUNDARY = "guard-test-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
TOKEN = "f3c9a1d27b4e8c06a5d1e9f2b7c4a8e1"
# A node quick to start (no models) with short deadlines, so that tests take seconds.
QUICK = {"preload_models": "false", "worker_threads": "0", "min_free_disk_mb": "0"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def multipart(count: int, rows: int = 64, columns: int = 48) -> bytes:
    parts = []
    for _ in range(count):
        buffer = io.BytesIO()
        small_cr(rows, columns).save_as(buffer, enforce_file_format=True)
        parts.append(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + buffer.getvalue()
            + b"\r\n"
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post(
    port: int,
    body: bytes,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, bytes, http.client.HTTPResponse]:
    connection: http.client.HTTPConnection = (
        http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=context)
        if context is not None
        else http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    )
    try:
        connection.request(
            "POST", "/dicom-web/studies", body, {"Content-Type": STOW_TYPE, **(headers or {})}
        )
        response = connection.getresponse()
        return response.status, response.read(), response
    finally:
        connection.close()


def get(
    port: int, path: str, context: ssl.SSLContext | None = None, token: str | None = None
) -> http.client.HTTPResponse:
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset


def stow_port(node: SandboxNode) -> int:
    return int(node.env["DICOM_NODE_DICOMWEB_PORT"])


def start_stow_node(sandbox: list[SandboxNode], tmp_path: Path, **settings: object) -> SandboxNode:
    """A node with STOW-RS on, once that port listens too (it starts after the admin port,
    which ``start_node`` waits for)."""
    node = start_node(sandbox, tmp_path, wait_models=False, dicomweb_port=free_port(), **settings)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", stow_port(node)), timeout=5).close()
            return node
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def spool_files(node: SandboxNode) -> list[Path]:
    return list(node.data_dir.glob(".tmp-*"))


def test_header_slowloris_on_both_ports_is_dropped_and_threads_stay_bounded(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    node = start_stow_node(
        sandbox,
        tmp_path,
        http_header_timeout_seconds=2,
        http_max_connections=32,
        **QUICK,
    )
    baseline = threads(node.pid)
    flood = []
    for port in (node.http_port, stow_port(node)):
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nX-Pad: ")
            flood.append(sock)
    time.sleep(1.0)
    # A client that speaks at once is served on both ports during the flood.
    assert node.health()["status"] == "ok"
    assert post(stow_port(node), multipart(1))[0] == 200
    peak, started, still_open = baseline, time.monotonic(), list(flood)
    while still_open and time.monotonic() - started < 30:
        for sock in still_open:  # a header byte every 0.5 s: no single read ever times out
            with contextlib.suppress(OSError):
                sock.send(b"a")
        peak = max(peak, threads(node.pid))
        time.sleep(0.5)
        still_open = [sock for sock in still_open if not closed_by_server(sock)]
    for sock in flood:
        sock.close()
    assert not still_open, f"{len(still_open)} of {len(flood)} slowloris connections still open"
    assert peak <= baseline + 16, f"threads went from {baseline} to {peak}"
    assert node.health()["status"] == "ok"
    assert "http_header_timeout_seconds" in node.log_text()


def test_trickling_uploads_are_dropped_and_a_normal_upload_is_then_served(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    node = start_stow_node(
        sandbox,
        tmp_path,
        maximum_associations=4,
        reserved_associations=0,
        http_min_body_kib_per_second=1,
        # Long enough for the uploads to be seen holding every slot on a loaded machine.
        http_body_grace_seconds=8,
        **QUICK,
    )
    head = (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {STOW_TYPE}\r\n"
        "Content-Length: 10000000\r\n\r\n"
    ).encode()
    trickling = []
    for _ in range(4):  # every request slot
        sock = socket.create_connection(("127.0.0.1", stow_port(node)))
        sock.sendall(head + f"--{BOUNDARY}\r\n".encode())
        trickling.append(sock)
    body = multipart(1)
    deadline = time.monotonic() + 10
    while (code := post(stow_port(node), body)[0]) != 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert code == 503  # the trickling uploads hold every slot...
    started, still_open = time.monotonic(), list(trickling)
    while still_open and time.monotonic() - started < 30:
        for sock in still_open:
            with contextlib.suppress(OSError):
                sock.send(b"x" * 64)  # 64 bytes every 0.5 s: 0.125 KiB/s
        time.sleep(0.5)
        still_open = [sock for sock in still_open if not closed_by_server(sock)]
    for sock in trickling:
        sock.close()
    assert not still_open, "a trickling upload was not dropped"
    # ... until they are dropped: then a normal upload is served.
    deadline = time.monotonic() + 10
    while (code := post(stow_port(node), body)[0]) == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert code == 200
    assert spool_files(node) == []  # nothing of the dropped requests stays behind
    assert node.log_text().count("(http_min_body_kib_per_second)") == 4


def test_a_fast_large_upload_is_not_dropped_by_the_rate_rule(
    sandbox: list[SandboxNode], tmp_path: Path
) -> None:
    node = start_stow_node(
        sandbox,
        tmp_path,
        http_min_body_kib_per_second=1024,  # 1 MiB/s
        http_body_grace_seconds=1,
        **QUICK,
    )
    body = multipart(8, rows=1800, columns=1800)  # about 50 MiB

    def paced() -> Iterator[bytes]:  # about 20 MiB/s for 2-3 s: the rule is checked often
        for offset in range(0, len(body), 1 << 20):
            yield body[offset : offset + (1 << 20)]
            time.sleep(0.05)

    connection = http.client.HTTPConnection("127.0.0.1", stow_port(node), timeout=120)
    connection.request(
        "POST",
        "/dicom-web/studies",
        paced(),
        {"Content-Type": STOW_TYPE, "Content-Length": str(len(body))},
    )
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    assert response.status == 200
    assert len(answer["00081199"]["Value"]) == 8
    assert "dropped" not in node.log_text()


def client_context(pki: Pki, identity: str | None = "client") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if identity is not None:
        who = getattr(pki, identity)
        context.load_cert_chain(str(who.cert), str(who.key))
    return context


def test_stow_over_https_needs_a_trusted_client_certificate(
    sandbox: list[SandboxNode], tmp_path: Path, pki: Pki
) -> None:
    node = start_stow_node(
        sandbox,
        tmp_path,
        dicomweb_tls="true",
        dicomweb_auth="mtls",
        tls_cert=pki.node.cert,
        tls_key=pki.node.key,
        tls_ca=pki.ca,
        **QUICK,
    )
    port = stow_port(node)
    body = multipart(1)
    code, answer, _ = post(port, body, context=client_context(pki))
    assert code == 200, answer
    for refused in (client_context(pki, None), client_context(pki, "rogue")):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            post(port, multipart(1), context=refused)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        post(port, multipart(1))  # plain HTTP to the TLS port
    assert len(JobLogReader(node.data_dir / "jobs.sqlite").instances()) == 1
    assert "STOW-RS intake on https://" in node.log_text()


@contextlib.contextmanager
def running_node(tmp_path: Path, pki: Pki, **settings: object) -> Iterator[Node]:
    """The whole node in this process (HTTPS on the admin port rules out the subprocess
    helpers, which wait for plain ``/healthz``), with the test PKI's certificates."""
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "port": free_port(),
        "http_port": free_port(),
        "dicomweb_port": free_port(),
        "pacs": None,
        "preload_models": False,
        "worker_threads": 0,
        "min_free_disk_mb": 0,
        "fsync": False,
        "tls_cert": pki.node.cert,
        "tls_key": pki.node.key,
        "tls_ca": pki.ca,
        **settings,
    }
    node = Node(Settings(**values))  # type: ignore[arg-type]
    node.start()
    try:
        yield node
    finally:
        node.stop()


def test_admin_port_with_client_certificates_keeps_healthz_open(tmp_path: Path, pki: Pki) -> None:
    with running_node(tmp_path, pki, admin_tls=True, admin_auth="mtls") as node:
        admin = node.settings.http_port
        anonymous = client_context(pki, None)
        assert get(admin, "/healthz", anonymous).status == 200  # load balancers need no cert
        assert get(admin, "/metrics", anonymous).status == 403
        assert get(admin, "/metrics", client_context(pki)).status == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            get(admin, "/metrics", client_context(pki, "rogue"))


def test_bearer_tokens_on_the_https_admin_port_and_the_stow_port(tmp_path: Path, pki: Pki) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with running_node(
        tmp_path,
        pki,
        admin_tls=True,
        admin_auth="token",
        admin_token_file=token_file,
        dicomweb_auth="token",
        dicomweb_token_file=token_file,
    ) as node:
        settings = node.settings
        https = client_context(pki, None)
        admin = settings.http_port
        assert get(admin, "/healthz", https).status == 200  # open for load balancers
        missing = get(admin, "/metrics", https)
        assert missing.status == 401
        assert missing.getheader("WWW-Authenticate", "").startswith("Bearer")
        assert get(admin, "/metrics", https, token=TOKEN[::-1]).status == 401
        assert get(admin, "/metrics", https, token=TOKEN).status == 200
        plain = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            plain.request("GET", "/healthz")
            plain.getresponse()
        plain.close()

        assert settings.dicomweb_port is not None
        code, _, response = post(settings.dicomweb_port, multipart(1))
        assert code == 401 and response.getheader("WWW-Authenticate", "").startswith("Bearer")
        wrong = {"Authorization": "Bearer " + TOKEN[::-1]}
        assert post(settings.dicomweb_port, multipart(1), wrong)[0] == 401
        assert node.joblog.admin.job_rows() == []  # nothing filed for refused requests
        right = {"Authorization": "Bearer " + TOKEN}
        assert post(settings.dicomweb_port, multipart(1), right)[0] == 200
        assert len(node.joblog.admin.job_rows()) == 1


@pytest.mark.parametrize("host_setting", ["http_host", "dicomweb_host"])
def test_serve_refuses_a_port_off_loopback_without_tls_and_authentication(
    tmp_path: Path, host_setting: str
) -> None:
    env = node_env(free_port(), free_port(), "none", dicomweb_port=free_port(), **QUICK)
    env.update(
        {
            "DICOM_NODE_DATA_DIR": str(tmp_path / "data"),
            f"DICOM_NODE_{host_setting.upper()}": "0.0.0.0",
        }
    )
    result = run_cli(env, "serve")
    assert result.returncode == 2, result.stderr
    line = f"dicom-node: configuration error: {host_setting} (DICOM_NODE_{host_setting.upper()})"
    assert result.stderr.splitlines()[-1].startswith(line), result.stderr
    assert "allow_insecure_http" in result.stderr

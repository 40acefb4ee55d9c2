"""The HTTP ports' guard (``dicom_node.web``) in-process, over real loopback sockets: the
header deadline, the connection cap, the body-rate and whole-request rules, bearer tokens;
and the settings and start checks that build it."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dicom_node.config import Settings, load_settings
from dicom_node.errors import ConfigError
from dicom_node.web import Access, GuardedHandler, GuardedHTTPServer, Limits, PortPolicy
from dicom_node.web.auth import (
    admin_policy,
    admin_security,
    check_exposure,
    dicomweb_policy,
    is_loopback,
    read_token,
)

TOKEN = "0123456789abcdef0123456789abcdef"


class Echo(GuardedHandler):
    """Works ``work`` seconds (as the node files parts), then reads the body in 4 KiB reads
    and answers with its length."""

    protocol_version = "HTTP/1.1"
    timeout = 30.0
    work = 0.0

    def do_POST(self) -> None:
        time.sleep(self.work)
        left = int(self.headers.get("Content-Length", "0"))
        received = 0
        try:
            while left > 0:
                block = self.rfile.read1(min(4096, left))  # type: ignore[attr-defined]
                if not block:
                    break
                received += len(block)
                left -= len(block)
        except OSError as exc:
            self.server.failures.append(type(exc).__name__)  # type: ignore[attr-defined]
            return
        self._answer(200, {"received": received})

    def do_GET(self) -> None:
        self._answer(200, {"path": self.path})

    def _answer(self, code: int, data: dict[str, object]) -> None:
        body = json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(
    limits: Limits | None = None, access: Access | None = None, work: float = 0.0
) -> Iterator[GuardedHTTPServer]:
    handler = type("Handler", (Echo,), {"work": work})
    server = GuardedHTTPServer(
        ("127.0.0.1", 0), handler, PortPolicy("test", limits or Limits(), access or Access())
    )
    server.failures = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def port(server: GuardedHTTPServer) -> int:
    return int(server.server_address[1])


def get(
    server: GuardedHTTPServer, path: str = "/", headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port(server), timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes ``sock`` within ``seconds`` (whatever it sent first)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass  # reset: closed too
    return True


def test_a_request_head_must_arrive_within_the_header_deadline() -> None:
    with serving(Limits(header_timeout_seconds=1.0)) as server:
        slow = socket.create_connection(("127.0.0.1", port(server)))
        started = time.monotonic()
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(4):  # a header byte every 0.3 s: each read alone is quick
            time.sleep(0.3)
            try:
                slow.sendall(b"X")
            except OSError:
                break
        assert closed_within(slow, 10)
        assert time.monotonic() - started < 8
        slow.close()
        assert get(server).status == 200  # and the port still serves


def test_waiting_connections_hold_no_thread_and_the_oldest_gives_way_at_the_cap() -> None:
    with serving(Limits(header_timeout_seconds=30, max_connections=8)) as server:
        before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", port(server))) for _ in range(40)]
        for sock in idle:
            sock.sendall(b"GET / HTTP/1.1\r\n")
        time.sleep(1.0)
        assert server.open_connections() <= 8
        assert threading.active_count() <= before + 1
        # A client that speaks at once gets through: the oldest idle one is dropped for it.
        assert get(server, "/ok").status == 200
        for sock in idle:
            sock.close()


def test_at_the_cap_with_every_connection_served_a_newcomer_gets_503() -> None:
    with serving(Limits(max_connections=2, min_body_kib_per_second=0)) as server:
        busy = []
        for _ in range(2):  # two requests whose bodies have not arrived: both being served
            sock = socket.create_connection(("127.0.0.1", port(server)))
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            busy.append(sock)
        deadline = time.monotonic() + 10
        while server.served_connections() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.6)  # older than the eviction age, but served: not evictable
        newcomer = socket.create_connection(("127.0.0.1", port(server)))
        newcomer.settimeout(10)
        answer = newcomer.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        newcomer.close()
        for sock in busy:
            sock.sendall(b"x" * 100)
            assert b"200 OK" in sock.recv(4096)
            sock.close()


def test_a_trickling_body_is_dropped_and_its_read_fails() -> None:
    limits = Limits(min_body_kib_per_second=4, body_grace_seconds=1.0)
    with serving(limits) as server:
        sock = socket.create_connection(("127.0.0.1", port(server)))
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        started = time.monotonic()
        for _ in range(20):
            try:
                sock.sendall(b"x" * 64)
            except OSError:
                break
            time.sleep(0.25)
            if time.monotonic() - started > 4:
                break
        assert closed_within(sock, 10)
        sock.close()
        deadline = time.monotonic() + 5
        while not server.failures and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.05)
        assert server.failures == ["ConnectionDropped"]  # type: ignore[attr-defined]


def test_the_nodes_own_work_does_not_count_against_the_body_rate() -> None:
    # The handler works 2.5 s before it reads; the client then sends at 128 KiB/s, twice the
    # minimum.  Counted from the connection's start, the rate would fall below it.
    limits = Limits(min_body_kib_per_second=64, body_grace_seconds=1.0)
    size = 256 * 1024
    with serving(limits, work=2.5) as server:
        sock = socket.create_connection(("127.0.0.1", port(server)))
        sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        time.sleep(2.0)
        for _ in range(size // 8192):
            sock.sendall(b"y" * 8192)
            time.sleep(1 / 16)
        sock.settimeout(30)
        answer = sock.recv(4096)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 200 "), (answer, server.failures)  # type: ignore[attr-defined]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"received": size}


def test_a_request_past_the_whole_request_deadline_is_dropped() -> None:
    limits = Limits(request_timeout_seconds=1.5, min_body_kib_per_second=0)
    with serving(limits) as server:
        sock = socket.create_connection(("127.0.0.1", port(server)))
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        started = time.monotonic()
        assert closed_within(sock, 10)
        assert time.monotonic() - started < 8
        sock.close()


def test_bearer_token_401_without_or_with_a_wrong_token_200_with_it() -> None:
    access = Access(token=TOKEN.encode(), open_paths=frozenset({"/healthz"}), mode="token")
    with serving(access=access) as server:
        missing = get(server, "/metrics")
        assert missing.status == 401
        assert missing.getheader("WWW-Authenticate") == 'Bearer realm="dicom-node"'
        wrong = get(server, "/metrics", {"Authorization": "Bearer " + TOKEN[:-1] + "X"})
        assert wrong.status == 401
        assert 'error="invalid_token"' in (wrong.getheader("WWW-Authenticate") or "")
        assert get(server, "/metrics", {"Authorization": "Basic " + TOKEN}).status == 401
        assert get(server, "/metrics", {"Authorization": "Bearer " + TOKEN}).status == 200
        assert get(server, "/healthz").status == 200  # open for load balancers


def test_a_wrong_token_is_refused_before_the_body_is_asked_for() -> None:
    access = Access(token=TOKEN.encode(), mode="token")
    with serving(access=access) as server:
        sock = socket.create_connection(("127.0.0.1", port(server)))
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Authorization: Bearer wrong-token-wrong-token\r\nContent-Length: 5000000\r\n\r\n"
        )
        sock.settimeout(10)
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 401 "), answer  # no "100 Continue" first
        sock.close()
        # A client that sends its body anyway still reads the 401 (lingering close).
        connection = http.client.HTTPConnection("127.0.0.1", port(server), timeout=10)
        connection.request("POST", "/", body=b"z" * 300_000)
        assert connection.getresponse().status == 401


def test_token_file_problems_name_the_setting(tmp_path: Path) -> None:
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    good.chmod(0o600)
    assert read_token(good, "admin_token_file") == TOKEN.encode()
    cases = {
        "missing": None,
        "empty": "  \n",
        "short": "abc123",
        "spaces": "two words but long enough to count",
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(
            ConfigError, match=r"^dicomweb_token_file \(DICOM_NODE_DICOMWEB_TOKEN_FILE\)"
        ):
            read_token(path, "dicomweb_token_file")


def test_http_settings_are_validated_naming_the_setting(tmp_path: Path) -> None:
    bad = {
        "http_header_timeout_seconds": {"http_header_timeout_seconds": 0},
        "http_min_body_kib_per_second": {"http_min_body_kib_per_second": -1},
        "http_max_connections": {"http_max_connections": 0},
        "admin_auth": {"admin_auth": "password"},
        "dicomweb_tls": {"dicomweb_tls": True},  # without tls_cert
        "dicomweb_auth": {"dicomweb_auth": "token"},  # without a token file
    }
    for setting, values in bad.items():
        with pytest.raises(ConfigError, match=rf"^{setting} \("):
            Settings(**values)  # type: ignore[arg-type]
    cert = tmp_path / "c.pem"
    with pytest.raises(ConfigError, match=r"^admin_auth .*mtls needs admin_tls and tls_ca"):
        Settings(tls_cert=cert, tls_key=cert, admin_tls=True, admin_auth="mtls")
    env = {"DICOM_NODE_DICOMWEB_AUTH": "Token", "DICOM_NODE_DICOMWEB_TOKEN_FILE": str(cert)}
    assert load_settings(environ=env).dicomweb_auth == "token"


def test_a_port_off_loopback_needs_tls_and_authentication_or_the_opt_out(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.7")
    exposed = Settings(http_host="0.0.0.0")
    with pytest.raises(ConfigError) as refused:
        admin_policy(exposed)
    message = str(refused.value)
    assert message.startswith("http_host (DICOM_NODE_HTTP_HOST): '0.0.0.0' is not a loopback")
    assert "admin_tls = true and admin_auth = mtls or token" in message
    assert "allow_insecure_http" in message
    admin_policy(Settings(http_host="0.0.0.0", allow_insecure_http=True))  # explicit opt-out
    with pytest.raises(ConfigError, match=r"^dicomweb_host .*dicomweb_tls = true"):
        dicomweb_policy(
            Settings(
                dicomweb_host="0.0.0.0",
                dicomweb_port=8111,
                dicomweb_auth="token",
                dicomweb_token_file=tmp_path / "t",
            )
        )
    # TLS and a token together satisfy the rule (checked before the files are read).
    secured = Settings(
        http_host="0.0.0.0",
        tls_cert=tmp_path / "c",
        tls_key=tmp_path / "k",
        admin_tls=True,
        admin_auth="token",
        admin_token_file=tmp_path / "t",
    )
    check_exposure(admin_security(secured), allow_insecure=False)

"""A threading HTTP server that no client can hold open: the base of the admin and STOW-RS ports.

``http.server`` gives every accepted connection a thread at once and only has a per-read
socket timeout: a client that sends a header byte every few seconds, or its body 64 bytes
every 10 s, holds a thread (and on STOW-RS a request slot) for as long as it likes.  Here:

* The thread that accepts also receives, without a thread per connection: the TLS handshake
  (when on), the request line and the headers must arrive within ``header_timeout_seconds``
  or the connection is closed.  Only a complete request head gets a handler thread.
* At most ``max_connections`` connections at once, waiting and served together.  At the
  limit the oldest one still sending its head (for ``EVICT_AFTER_SECONDS`` at least) is
  dropped for the newcomer, so a flood of slow sockets churns itself while a client that
  speaks at once gets through; when every connection is being served the newcomer gets a
  503 (plain HTTP) or is closed (TLS) at once.  Threads are bounded by the limit.
* While a handler waits for its client, the same thread drops the connection (it shuts the
  socket down, and the handler's read raises ``ConnectionDropped``) once the request has
  taken ``request_timeout_seconds`` since it connected, or once the time spent waiting for
  the body passes ``body_grace_seconds`` and the body arrived slower than
  ``min_body_kib_per_second`` on average over that time.  Time the node spends on its own
  work (filing parts) never counts.
* One request per connection (an idle kept-alive connection would hold a thread), closed
  after a short linger so that a client still sending its body reads the answer instead of
  a reset.
* Bearer-token and client-certificate checks (``Access``) run before any method handler,
  so a refused client never gets its body read; paths in ``Access.open_paths`` are exempt.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import logging
import re
import selectors
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dicom_node.logs import clean

log = logging.getLogger(__name__)

EVICT_AFTER_SECONDS = 0.5
TICK_SECONDS = 0.25  # how often deadlines are checked
MAX_HEAD_BYTES = 64 * 1024
# After the answer: how long, and how much of an unread body, is read and discarded before
# the close (closing with unread data sends a reset that can destroy the answer in flight).
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024
SHUTDOWN_JOIN_SECONDS = 2.0
_ACCEPTS_PER_TICK = 256
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 5\r\nConnection: close\r\nContent-Length: 38\r\n\r\n"
    b'{"error": "too many open connections"}'
)
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class ConnectionDropped(TimeoutError):
    """The guard dropped the connection while the handler waited for its client."""


@dataclass(frozen=True)
class Limits:
    """How long and how slowly a client may take (settings ``http_*``, both HTTP ports)."""

    header_timeout_seconds: float = 10.0
    request_timeout_seconds: float = 900.0
    min_body_kib_per_second: float = 16.0  # 0: no minimum
    body_grace_seconds: float = 10.0
    max_connections: int = 64


@dataclass(frozen=True)
class Access:
    """Who may use a port: TLS (client certificates are checked by the context) and an
    optional bearer token; ``open_paths`` need neither token nor anything else."""

    ssl_context: ssl.SSLContext | None = None
    token: bytes | None = None
    open_paths: frozenset[str] = frozenset()
    mode: str = "none"  # what the log says: none, mtls or token

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    def describe(self) -> str:
        clients = {
            "mtls": "client certificates required",
            "token": "bearer token required",
        }.get(self.mode, "no authentication")
        if self.open_paths and self.mode != "none":
            clients += f" (except {', '.join(sorted(self.open_paths))})"
        return ("TLS, " if self.ssl_context is not None else "no TLS, ") + clients


@dataclass(frozen=True)
class PortPolicy:
    name: str  # in log lines: "admin HTTP", "STOW-RS"
    limits: Limits = field(default_factory=Limits)
    access: Access = field(default_factory=Access)


class Connection:
    """One accepted connection, from its first byte to its close."""

    def __init__(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self.sock = sock  # becomes the TLS wrapper once the handshake starts
        self.address = address
        self.accepted = time.monotonic()
        self.head = bytearray()  # what arrived before the handler started (head and more)
        self.handshaken = False
        self.thread: threading.Thread | None = None
        # Written by the handler thread, read by the guard (plain attribute reads and writes).
        self.blocked_since: float | None = None  # in a read or write on the client
        self.blocked_reading = False
        self.read_wait = 0.0  # seconds spent waiting for the client's bytes so far
        self.bytes_read = 0
        self.dropped: str | None = None

    @property
    def peer(self) -> str:
        return clean(str(self.address[0]))


class GuardedHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with the guard of the module docstring; handlers derive from
    ``GuardedHandler``."""

    daemon_threads = True
    block_on_close = False
    # The listen backlog (socketserver's is 5: a burst of connects waits for SYN retries,
    # a second or more each, even while the loop accepts at once).
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[GuardedHandler],
        policy: PortPolicy | None = None,
    ) -> None:
        self.policy = policy or PortPolicy("HTTP")
        super().__init__(address, handler)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._lock = threading.Lock()
        self._waiting: OrderedDict[int, Connection] = OrderedDict()  # the loop's thread only
        self._served: set[Connection] = set()  # under _lock (handler threads remove theirs)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._last_busy_log = 0.0
        self._busy_refused = 0

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{self.policy.access.scheme}://{host!s}:{port}"

    def open_connections(self) -> int:
        with self._lock:
            return len(self._waiting) + len(self._served)

    def served_connections(self) -> int:
        """Connections whose request head is in and a handler thread serves."""
        with self._lock:
            return len(self._served)

    # -- the accepting and receiving loop -----------------------------------------------------

    def serve_forever(self, poll_interval: float = TICK_SECONDS) -> None:
        if self._stop.is_set():  # shut down before this thread got here
            return
        self._stopped.clear()
        self.socket.setblocking(False)
        self._selector.register(self.socket, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                self._step(min(poll_interval, TICK_SECONDS))
        finally:
            for connection in list(self._waiting.values()):
                self._close_waiting(connection)
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop accepting, close waiting connections, drop those blocked on their client, and
        give the handler threads a moment to finish their last log lines and writes."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"!")
        self._stopped.wait()
        with self._lock:
            served = list(self._served)
        for connection in served:
            if connection.blocked_since is not None:
                self._drop(connection, "the node is stopping", quiet=True)
        deadline = time.monotonic() + SHUTDOWN_JOIN_SECONDS
        threads = [c.thread for c in served if c.thread is not None]
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def server_close(self) -> None:
        super().server_close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _step(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            try:
                if key.fileobj is self.socket:
                    self._accept_all()
                elif key.fileobj is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                else:
                    self._receive(key.data)
            except Exception:  # a bug or no thread to be had: that connection, not the port
                log.exception("%s: receiving a request failed", self.policy.name)
                if isinstance(key.data, Connection):
                    self._close_waiting(key.data)
        self._expire()

    def _accept_all(self) -> None:
        for _ in range(_ACCEPTS_PER_TICK):
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: try again next tick
                log.warning("%s: accept failed: %s", self.policy.name, exc.strerror)
                return
            self._admit(Connection(sock, (str(address[0]), int(address[1]))))

    def _admit(self, connection: Connection) -> None:
        if self.open_connections() >= self.policy.limits.max_connections and not self._evict():
            self._refuse_busy(connection)
            return
        sock = connection.sock
        sock.setblocking(False)
        context = self.policy.access.ssl_context
        if context is not None:
            try:
                connection.sock = context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
            except (ssl.SSLError, OSError):
                _close(sock)
                return
        else:
            connection.handshaken = True
        with self._lock:
            self._waiting[id(connection)] = connection
        self._selector.register(connection.sock, selectors.EVENT_READ, connection)
        self._receive(connection)  # a TLS server may have nothing to wait for yet

    def _evict(self) -> bool:
        """Drop the oldest connection still sending its head, if it has had its chance."""
        oldest = next(iter(self._waiting.values()), None)
        if oldest is None or time.monotonic() - oldest.accepted < EVICT_AFTER_SECONDS:
            return False
        log.info(
            "%s: dropped a connection from %s that had not sent its request after %.1f s, "
            "for a newer one (http_max_connections = %d reached)",
            self.policy.name,
            oldest.peer,
            time.monotonic() - oldest.accepted,
            self.policy.limits.max_connections,
        )
        self._close_waiting(oldest)
        return True

    def _refuse_busy(self, connection: Connection) -> None:
        if self.policy.access.ssl_context is None:
            with contextlib.suppress(OSError):
                connection.sock.setblocking(False)
                connection.sock.send(_BUSY)
        _close(connection.sock)
        self._busy_refused += 1
        self._log_busy()

    def _log_busy(self) -> None:
        """At most one line a second about connections refused at the cap."""
        now = time.monotonic()
        if self._busy_refused and now - self._last_busy_log >= 1.0:
            log.warning(
                "%s: refused %d connection(s): all %d (http_max_connections) are in use",
                self.policy.name,
                self._busy_refused,
                self.policy.limits.max_connections,
            )
            self._last_busy_log, self._busy_refused = now, 0

    def _receive(self, connection: Connection) -> None:
        """Advance the TLS handshake and read what has arrived of the request head."""
        try:
            if not connection.handshaken and not self._handshake(connection):
                return
            while True:
                chunk = connection.sock.recv(65536)
                if not chunk:
                    self._close_waiting(connection)  # left without a complete request
                    return
                searched = max(0, len(connection.head) - 3)
                connection.head += chunk
                if _HEAD_END.search(connection.head, searched):
                    self._start_handler(connection)
                    return
                if len(connection.head) > MAX_HEAD_BYTES:
                    self._close_waiting(connection, _TOO_LARGE)
                    return
        except (BlockingIOError, ssl.SSLWantReadError):
            self._watch(connection, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            self._watch(connection, selectors.EVENT_WRITE)
        except (ssl.SSLError, OSError):
            self._close_waiting(connection)

    def _handshake(self, connection: Connection) -> bool:
        assert isinstance(connection.sock, ssl.SSLSocket)
        try:
            connection.sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except (ssl.SSLError, OSError) as exc:
            log.info(
                "%s: TLS handshake with %s failed: %s", self.policy.name, connection.peer, _why(exc)
            )
            self._close_waiting(connection)
            return False
        connection.handshaken = True
        return True

    def _watch(self, connection: Connection, events: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            if self._selector.get_key(connection.sock).events != events:
                self._selector.modify(connection.sock, events, connection)

    def _start_handler(self, connection: Connection) -> None:
        self._selector.unregister(connection.sock)
        connection.sock.setblocking(True)
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(connection, connection.address),
            name=f"{self.policy.name} request",
            daemon=True,
        )
        connection.thread = thread
        with self._lock:
            del self._waiting[id(connection)]
            self._served.add(connection)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: not served after all
            with self._lock:
                self._served.discard(connection)
            raise

    def _close_waiting(self, connection: Connection, last_words: bytes = b"") -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        with self._lock:
            self._waiting.pop(id(connection), None)
        if last_words and self.policy.access.ssl_context is None:
            with contextlib.suppress(OSError):
                connection.sock.send(last_words)
        _close(connection.sock)

    def _expire(self) -> None:
        self._log_busy()
        now = time.monotonic()
        limits = self.policy.limits
        for connection in list(self._waiting.values()):
            if now - connection.accepted < limits.header_timeout_seconds:
                break  # ordered by arrival: the rest are younger
            what = "TLS handshake and request head" if not connection.handshaken else "request head"
            log.info(
                "%s: closed a connection from %s: no complete %s within %g s "
                "(http_header_timeout_seconds)",
                self.policy.name,
                connection.peer,
                what,
                limits.header_timeout_seconds,
            )
            self._close_waiting(connection)
        with self._lock:
            served = list(self._served)
        for connection in served:
            reason = _overdue(connection, limits, now)
            if reason is not None:
                self._drop(connection, reason)

    def _drop(self, connection: Connection, reason: str, quiet: bool = False) -> None:
        if connection.dropped is not None:
            return
        connection.dropped = reason
        if not quiet:
            log.warning(
                "%s: dropped the request from %s: %s", self.policy.name, connection.peer, reason
            )
        # Wakes the handler's blocking read or write; works on a TLS socket too.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(connection.sock, socket.SHUT_RDWR)

    # -- handler threads ----------------------------------------------------------------------

    def shutdown_request(self, request: Any) -> None:
        connection: Connection = request
        try:
            if connection.dropped is None:
                _linger(connection.sock)
            _close(connection.sock)
        finally:
            with self._lock:
                self._served.discard(connection)

    def close_request(self, request: Any) -> None:
        _close(request.sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A handler raised: the client went away (quiet) or a bug (logged with its trace)."""
        connection: Connection = request
        if connection.dropped is not None:
            return  # already logged by _drop
        error = sys.exception()
        if isinstance(error, OSError):
            log.info(
                "%s: connection from %s failed: %s",
                self.policy.name,
                connection.peer,
                type(error).__name__,
            )
        else:
            log.exception("%s: request from %s failed", self.policy.name, connection.peer)


def _overdue(connection: Connection, limits: Limits, now: float) -> str | None:
    """Why a connection whose handler waits for its client must be dropped, or None."""
    since = connection.blocked_since
    if since is None or connection.dropped is not None:
        return None
    if now - connection.accepted > limits.request_timeout_seconds:
        return (
            f"the request took longer than {limits.request_timeout_seconds:g} s "
            "(http_request_timeout_seconds)"
        )
    if not connection.blocked_reading or limits.min_body_kib_per_second <= 0:
        return None
    waited = connection.read_wait + (now - since)
    rate = connection.bytes_read / 1024 / waited if waited > 0 else 0.0
    if waited > limits.body_grace_seconds and rate < limits.min_body_kib_per_second:
        return (
            f"its body arrived at {rate:.2f} KiB/s over {waited:.0f} s, slower than "
            f"{limits.min_body_kib_per_second:g} KiB/s (http_min_body_kib_per_second)"
        )
    return None


class _Reader(io.RawIOBase):
    """The handler's input: the bytes the guard already read, then the socket, timed."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self._connection = connection
        self._prefix = memoryview(bytes(connection.head))

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            size = min(len(buffer), len(self._prefix))
            buffer[:size] = self._prefix[:size]
            self._prefix = self._prefix[size:]
            return size
        connection = self._connection
        started = time.monotonic()
        connection.blocked_reading = True
        connection.blocked_since = started
        try:
            count = connection.sock.recv_into(buffer)
        except OSError as exc:
            _raise_if_dropped(connection)
            raise exc
        finally:
            connection.blocked_since = None
            connection.blocked_reading = False
            connection.read_wait += time.monotonic() - started
        if count == 0:
            _raise_if_dropped(connection)
        connection.bytes_read += count
        return count


class _Writer(io.BufferedIOBase):
    """The handler's output: every write goes out whole (``sendall``), timed."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self._connection = connection

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        connection = self._connection
        connection.blocked_since = time.monotonic()
        try:
            connection.sock.sendall(data)
        except OSError:
            _raise_if_dropped(connection)
            raise
        finally:
            connection.blocked_since = None
        with memoryview(data) as view:
            return view.nbytes


def _raise_if_dropped(connection: Connection) -> None:
    if connection.dropped is not None:
        raise ConnectionDropped(connection.dropped)


class GuardedHandler(BaseHTTPRequestHandler):
    """A request handler for ``GuardedHTTPServer``: one request per connection, the access
    check before the method handler (and before ``100 Continue``)."""

    server: GuardedHTTPServer
    _access_checked: bool = False

    def setup(self) -> None:
        connection: Connection = self.request
        self.connection = connection.sock
        connection.sock.settimeout(self.timeout)  # a single read or write that stalls
        self.rfile = io.BufferedReader(_Reader(connection))
        self.wfile = _Writer(connection)

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.wfile.flush()
        self.rfile.close()

    def parse_request(self) -> bool:
        return super().parse_request() and self._allowed()

    def handle_expect_100(self) -> bool:
        return self._allowed() and super().handle_expect_100()

    def _allowed(self) -> bool:
        if self._access_checked:
            return True
        access = self.server.policy.access
        path = self.path.split("?", 1)[0]
        refusal: tuple[int, str, dict[str, str]] | None = None
        if path in access.open_paths:
            pass
        elif access.mode == "mtls" and not _has_client_certificate(self.connection):
            # Only where open paths made the certificate optional in the handshake.
            refusal = (403, "no client certificate", {})
        elif access.token is not None:
            presented = _bearer(self.headers.get("Authorization", ""))
            if presented is None:
                refusal = (401, "no bearer token", {"WWW-Authenticate": _CHALLENGE})
            elif not hmac.compare_digest(presented, access.token):
                challenge = _CHALLENGE + ', error="invalid_token"'
                refusal = (401, "wrong bearer token", {"WWW-Authenticate": challenge})
        if refusal is None:
            self._access_checked = True
            return True
        code, reason, headers = refusal
        log.warning(
            "%s: refused %s %s from %s (%d): %s",
            self.server.policy.name,
            clean(self.command),
            clean(path),
            clean(self.client_address[0]),
            code,
            reason,
        )
        body = json.dumps({"error": f"authentication required: {reason}"}).encode()
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        return False


_CHALLENGE = 'Bearer realm="dicom-node"'


def _has_client_certificate(sock: object) -> bool:
    """Whether the TLS peer sent a certificate (the handshake verified any it sent)."""
    return isinstance(sock, ssl.SSLSocket) and bool(sock.getpeercert())


def _bearer(header: str) -> bytes | None:
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip().encode("latin-1", "replace")


def _linger(sock: socket.socket) -> None:
    """Half-close, then read and discard what the client still sends (briefly)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        discarded = 0
        while discarded < LINGER_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            sock.settimeout(remaining)
            chunk = socket.socket.recv(sock, 65536)  # raw bytes: no TLS record to decode
            if not chunk:
                return
            discarded += len(chunk)
    except (OSError, ValueError):
        return


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
    return clean(str(reason or type(exc).__name__))

"""Who may open an association, and how many at once: the DICOM port's front door.

pynetdicom 3.0.4 counts a connection against ``maximum_associations`` from the moment TCP
accepts it, waits ``acse_timeout`` for the A-ASSOCIATE-RQ with an ARTIM timer that is only
checked between blocking reads (a peer sending one byte a second never trips it), and does
the TLS handshake on the thread that accepts every connection (one silent TLS client stalls
the port).  So 16 idle sockets locked every sender out.  This module replaces that front
part and hands pynetdicom a connection whose A-ASSOCIATE-RQ is already complete:

* Every connection runs on its own thread and must finish its TLS handshake and its whole
  A-ASSOCIATE-RQ within ``association_request_timeout_seconds`` (one deadline for both),
  or it is closed.  Until then it is *unidentified* and holds no association slot.
* At most ``maximum_associations - reserved_associations`` unidentified connections wait
  at once (all ``maximum_associations`` when ``allowed_aes`` is empty).  When they are
  that many, the oldest one that has waited at least ``EVICT_AFTER_SECONDS`` is dropped
  for the newcomer: a flood of idle sockets churns itself while a sender that speaks at
  once gets through.
* The request is then checked here, before pynetdicom sees it: called AE, ``allowed_aes``,
  ``ae_hosts`` (a listed AE only from its host, like Orthanc's ``DicomCheckModalityHost``)
  and the slots: ``maximum_associations`` associations at once, the last
  ``reserved_associations`` only for AEs in ``allowed_aes``.  A refusal is an
  A-ASSOCIATE-RJ with the standard reason (PS3.8 9.3.4), a log line and an audit line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node import tls
from dicom_node.admin.audit import AuditLog
from dicom_node.errors import ConfigError, IntakeRefused
from dicom_node.intake import pynetdicom_adapter
from dicom_node.intake.filing import NodeAssociation

log = logging.getLogger(__name__)

EVICT_AFTER_SECONDS = 0.5
# An A-ASSOCIATE-RQ with 128 presentation contexts is about 15 KB; user identity adds a few.
MAX_REQUEST_BYTES = 1024 * 1024
_A_ASSOCIATE_RQ = 0x01

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 Table 9-21.
RJ_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service user, called AE not recognised
RJ_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
RJ_LIMIT = (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit


class AdmissionSettings(tls.TlsSettings, Protocol):
    """What the gate reads of the configuration (``config.Settings`` has it)."""

    @property
    def ae_title(self) -> str: ...
    @property
    def require_called_ae(self) -> bool: ...
    @property
    def allowed_aes(self) -> tuple[str, ...]: ...
    @property
    def ae_hosts(self) -> Mapping[str, str]: ...
    @property
    def maximum_associations(self) -> int: ...
    @property
    def reserved_associations(self) -> int: ...
    @property
    def network_timeout_seconds(self) -> float: ...
    @property
    def association_request_timeout_seconds(self) -> float: ...


@dataclass
class Peer:
    """One connection, as far as it may be logged and audited."""

    host: str
    port: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    tls: bool = False
    tls_version: str | None = None
    client_certificate: str | None = None  # the verified certificate's subject
    calling_ae: str | None = None
    called_ae: str | None = None
    accepted: bool = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def fields(self) -> dict[str, Any]:
        return {
            "association": self.id,
            "calling_ae": self.calling_ae,
            "called_ae": self.called_ae,
            "peer": self.address,
            "tls": self.tls,
            "tls_version": self.tls_version,
            "client_certificate": self.client_certificate,
        }

    def describe(self) -> str:
        who = f"calling AE {self.calling_ae} from " if self.calling_ae else ""
        if not self.tls:
            return f"{who}{self.address} (no TLS)"
        if self.tls_version is None:
            return f"{who}{self.address} (TLS)"
        cert = f", client {self.client_certificate}" if self.client_certificate else ""
        return f"{who}{self.address} ({self.tls_version}{cert})"


class Refused(IntakeRefused):
    """A connection we drop or refuse; ``reject`` is the A-ASSOCIATE-RJ to send, if any."""

    def __init__(
        self, reason: str, reject: tuple[int, int, int] | None = None, quiet: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reject = reject
        self.quiet = quiet  # a probe that connected and left: INFO, not WARNING


@dataclass
class _Waiting:
    """An unidentified connection: TCP accepted, A-ASSOCIATE-RQ not complete yet."""

    key: int  # id() of the accepted socket (``sock`` becomes its TLS wrapper)
    sock: socket.socket
    peer: Peer
    since: float = field(default_factory=time.monotonic)
    evicted: bool = False


@dataclass
class _Prepared:
    """What the request handler gets: the stream and the request bytes already read."""

    stream: socket.socket
    request: bytes
    peer: Peer


class Gate:
    """Admission policy and bookkeeping, shared by the server's connection threads."""

    def __init__(
        self,
        settings: AdmissionSettings,
        audit: AuditLog | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ae_hosts: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.audit = audit
        self.ssl_context = ssl_context
        self.ae_hosts = dict(ae_hosts or {})
        self.reserved = settings.reserved_associations if settings.allowed_aes else 0
        self.waiting_limit = settings.maximum_associations - self.reserved
        self._lock = threading.Condition()
        self._waiting: OrderedDict[int, _Waiting] = OrderedDict()
        self._active = 0
        self._peers: dict[int, Peer] = {}

    @classmethod
    def from_settings(cls, settings: AdmissionSettings, audit: AuditLog | None = None) -> Gate:
        """Load the TLS context and resolve ``ae_hosts`` once; ConfigError if either fails."""
        return cls(settings, audit, tls.server_context(settings), resolve_ae_hosts(settings))

    # -- accept thread ------------------------------------------------------------------------

    def register(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Record a new connection as waiting, dropping the oldest waiter if need be."""
        peer = Peer(str(address[0]), int(address[1]))
        with self._lock:
            while len(self._waiting) >= self.waiting_limit:
                oldest = next(iter(self._waiting.values()))
                age = time.monotonic() - oldest.since
                if age >= EVICT_AFTER_SECONDS:
                    self._evict(
                        oldest,
                        "dropped for a newer connection while "
                        f"{len(self._waiting)} connections waited without a request",
                    )
                else:
                    self._lock.wait(EVICT_AFTER_SECONDS - age)
            self._waiting[id(sock)] = _Waiting(id(sock), sock, peer)

    def close_waiting(self) -> None:
        """At shutdown: drop every connection that has not associated yet."""
        with self._lock:
            for waiting in list(self._waiting.values()):
                self._evict(waiting, "the node is stopping")

    def _evict(self, waiting: _Waiting, reason: str) -> None:
        waiting.evicted = True
        self._waiting.pop(waiting.key, None)
        self._refused(waiting.peer, Refused(reason))
        # The base class's shutdown works on an SSLSocket too and wakes its select().
        with contextlib.suppress(OSError):
            socket.socket.shutdown(waiting.sock, socket.SHUT_RDWR)

    # -- connection threads -------------------------------------------------------------------

    def serve(self, server: GuardedServer, sock: socket.socket, address: tuple[str, int]) -> None:
        """Everything one connection goes through, on its own thread."""
        with self._lock:
            waiting = self._waiting.get(id(sock))
        if waiting is None:  # evicted before this thread ran
            _close(sock)
            return
        peer = waiting.peer
        stream: socket.socket = sock
        try:
            try:
                stream, request = self._receive(waiting)
            finally:
                with self._lock:
                    if self._waiting.get(id(sock)) is waiting:
                        del self._waiting[id(sock)]
                    self._lock.notify_all()
            if waiting.evicted:  # dropped just as its request completed
                raise Refused("dropped")
            self._admit(peer, request)
        except Refused as refusal:
            if not waiting.evicted:
                self._refused(peer, refusal)
                if refusal.reject is not None:
                    _send_reject(stream, refusal.reject)
            _close(stream)
            return
        try:
            stream.setblocking(True)
            # A peer that stalls in the middle of a PDU is dropped instead of holding a slot.
            stream.settimeout(self.settings.network_timeout_seconds)
            server.finish_request(cast(Any, _Prepared(stream, request, peer)), address)
        finally:
            with self._lock:
                self._active -= 1

    def _receive(self, waiting: _Waiting) -> tuple[socket.socket, bytes]:
        """TLS handshake (when on) and the whole A-ASSOCIATE-RQ, within one deadline."""
        timeout = self.settings.association_request_timeout_seconds
        deadline = waiting.since + timeout
        peer = waiting.peer
        stream: socket.socket = waiting.sock
        stream.setblocking(False)
        if self.ssl_context is not None:
            tls_stream = self.ssl_context.wrap_socket(
                stream, server_side=True, do_handshake_on_connect=False
            )
            stream = waiting.sock = tls_stream
            peer.tls = True  # the port speaks TLS only: this is a TLS attempt either way
            while True:
                try:
                    tls_stream.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    _wait(waiting, deadline, timeout, write=False)
                except ssl.SSLWantWriteError:
                    _wait(waiting, deadline, timeout, write=True)
                except (ssl.SSLError, OSError) as exc:
                    raise Refused(f"TLS handshake failed: {_tls_reason(exc)}") from None
            peer.tls = True
            peer.tls_version = tls_stream.version()
            peer.client_certificate = tls.peer_subject(tls_stream)
        header = _read(stream, 6, waiting, deadline, timeout, first=True)
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type != _A_ASSOCIATE_RQ:
            raise Refused(f"not a DICOM association request (PDU type 0x{pdu_type:02X})")
        if length > MAX_REQUEST_BYTES:
            raise Refused(f"A-ASSOCIATE-RQ of {length} bytes is larger than we accept")
        return stream, header + _read(stream, length, waiting, deadline, timeout)

    def _admit(self, peer: Peer, request: bytes) -> None:
        """Check the request against the policy; take a slot or raise ``Refused``."""
        pdu = A_ASSOCIATE_RQ()
        try:
            pdu.decode(request)
        except Exception as exc:  # pynetdicom raises several kinds on garbage
            raise Refused(f"malformed A-ASSOCIATE-RQ ({type(exc).__name__})") from None
        peer.calling_ae = str(pdu.calling_ae_title).strip()
        peer.called_ae = str(pdu.called_ae_title).strip()
        settings = self.settings
        if settings.require_called_ae and peer.called_ae != settings.ae_title.strip():
            raise Refused(f"called AE {peer.called_ae!r} is not {settings.ae_title}", RJ_CALLED_AE)
        allowed = peer.calling_ae in settings.allowed_aes
        if settings.allowed_aes and not allowed:
            raise Refused(f"calling AE {peer.calling_ae!r} is not in allowed_aes", RJ_CALLING_AE)
        bound = self.ae_hosts.get(peer.calling_ae)
        if bound is not None and _normal_ip(peer.host) not in bound:
            raise Refused(
                f"calling AE {peer.calling_ae} is bound by ae_hosts to "
                f"{settings.ae_hosts[peer.calling_ae]} ({', '.join(sorted(bound))})",
                RJ_CALLING_AE,
            )
        limit = settings.maximum_associations - (0 if allowed else self.reserved)
        with self._lock:
            if self._active >= limit:
                kept = (
                    f", {self.reserved} kept for allowed_aes"
                    if limit < settings.maximum_associations
                    else ""
                )
                raise Refused(f"all {limit} association slots are in use{kept}", RJ_LIMIT)
            self._active += 1

    # -- association events (pynetdicom's threads) --------------------------------------------

    def attach(self, assoc: Association, peer: Peer) -> None:
        with self._lock:
            self._peers[id(assoc)] = peer

    def peer(self, assoc: Association) -> Peer | None:
        with self._lock:
            return self._peers.get(id(assoc))

    def accepted(self, assoc: Association) -> None:
        peer = self.peer(assoc) or _peer_of(assoc)
        peer.accepted = True
        log.info("association accepted: %s", peer.describe())
        if self.audit is not None:
            self.audit.association("accepted", **peer.fields())

    def rejected(self, assoc: Association) -> None:
        """pynetdicom's own refusals (our checks already passed): rare, but audited."""
        peer = self.peer(assoc) or _peer_of(assoc)
        self._refused(peer, Refused("rejected during negotiation by pynetdicom"))

    def detach(self, assoc: Association) -> None:
        """The association's thread has ended: log and audit what it did."""
        with self._lock:
            peer = self._peers.pop(id(assoc), None)
        if peer is None or not peer.accepted:
            return
        if assoc.is_released:
            outcome = "released"
        elif assoc.is_aborted:
            outcome = "aborted"
        else:
            outcome = "closed"  # the peer dropped the connection without release or abort
        count = 0
        if self.audit is not None:
            count = self.audit.association_ended(assoc, outcome, **peer.fields())
        log.info("association %s: %s, %d instance(s)", outcome, peer.describe(), count)

    def _refused(self, peer: Peer, refusal: Refused) -> None:
        level = logging.INFO if refusal.quiet else logging.WARNING
        log.log(level, "refused association from %s: %s", peer.describe(), refusal.reason)
        if self.audit is not None:
            self.audit.association("refused", reason=refusal.reason, **peer.fields())


class _PrefetchedSocket(AssociationSocket):
    """pynetdicom's socket, first serving the A-ASSOCIATE-RQ bytes the gate already read, and
    letting the association's DUL thread wait for data instead of polling.

    pynetdicom's DUL loop sleeps 1 ms whenever it found nothing to do and checks the socket
    with a zero timeout: each association's thread wakes 1000 times a second even when idle,
    and with a few associations open those wake-ups take the GIL from the ones receiving
    (measured: one sender took 2.5 s instead of 1.0 s while 7 idle associations were open).
    Here ``ready`` blocks in ``select`` on the socket and on a wake-up pipe for up to
    ``WAIT_SECONDS``, the loop's own sleep is set to 0, and every primitive the association
    hands to the DUL (a C-STORE response, a release, an abort) writes to the pipe, so data
    and responses are handled at once and an idle association wakes 50 times a second.
    """

    WAIT_SECONDS = 0.02  # the DUL loop's timers (ARTIM, idle) are checked at least this often

    def __init__(self, assoc: Association, client_socket: socket.socket, prefix: bytes) -> None:
        self._prefix = bytearray(prefix)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pipe_lock = threading.Lock()  # no write to a closed (and reused) descriptor
        super().__init__(assoc, client_socket=client_socket)
        pynetdicom_adapter.stop_dul_sleeping(assoc)  # ready() waits instead
        pynetdicom_adapter.call_after_send_pdu(assoc, self.wake)

    def wake(self) -> None:
        with self._pipe_lock:
            if self._wake_w < 0:
                return
            with contextlib.suppress(OSError):  # a full pipe: it is woken already
                os.write(self._wake_w, b"!")

    @property
    def ready(self) -> bool:
        if self._prefix:
            return True
        sock = self.socket
        assoc = self.assoc
        if (
            sock is None
            or pynetdicom_adapter.dul_busy(assoc)
            or pynetdicom_adapter.dul_stopping(assoc)
            or self._wake_r < 0
        ):
            return bool(super().ready)
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            readable, _, _ = select.select([sock.fileno(), self._wake_r], [], [], self.WAIT_SECONDS)
        except (OSError, ValueError):
            return bool(super().ready)  # pynetdicom's own check reports the closed socket
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
        return sock.fileno() in readable

    def close(self) -> None:
        super().close()
        with self._pipe_lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._wake_r = self._wake_w = -1

    def recv(self, nr_bytes: int) -> bytearray:
        head = self._prefix[:nr_bytes]
        del self._prefix[:nr_bytes]
        if len(head) == nr_bytes:
            return head
        return head + super().recv(nr_bytes - len(head))


class PreparedHandler(RequestHandler):
    """Builds the acceptor association on a prepared connection and waits for its end."""

    server: GuardedServer

    def handle(self) -> None:
        prepared = cast(_Prepared, self.request)
        assoc = self._prepared_association(prepared)
        gate = self.server.gate
        gate.attach(assoc, prepared.peer)
        try:
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            assoc.join()
        finally:
            gate.detach(assoc)

    def _prepared_association(self, prepared: _Prepared) -> Association:
        # pynetdicom's own construction, with our association (it answers malformed
        # C-STORE-RQs) and our socket.
        assoc = pynetdicom_adapter.build_acceptor_association(
            self,
            NodeAssociation,
            lambda assoc: _PrefetchedSocket(assoc, prepared.stream, prepared.request),
        )
        if self.server.receive_directory is not None:
            pynetdicom_adapter.receive_into(assoc, self.server.receive_directory)
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the gate in front (see the module docstring)."""

    daemon_threads = True
    block_on_close = False
    gate: Gate
    # Where received data sets are written as they arrive (the node's data directory, never
    # the system temporary directory); None: pynetdicom's default.
    receive_directory: Path | None = None
    # How long ``shutdown`` waits for connection threads to finish their last log lines and
    # job-log writes (a connection still transferring is not waited for longer).
    shutdown_join_seconds = 2.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections: set[threading.Thread] = set()
        self._connections_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # Accept only: the TLS handshake runs on the connection's own thread, under a deadline.
        assert self.socket is not None
        client, address = self.socket.accept()
        return client, address

    def process_request(self, request: Any, client_address: Any) -> None:
        self.gate.register(request, client_address)
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        current = threading.current_thread()
        with self._connections_lock:
            self._connections.add(current)
        try:
            self.gate.serve(self, request, client_address)
        except Exception:
            log.exception("connection from %s failed", client_address)
            _close(request)
        finally:
            with self._connections_lock:
                self._connections.discard(current)

    def shutdown(self) -> None:
        """Stop accepting, drop waiting connections, then give the connection threads a moment
        to finish: a thread that ended its association after the server stopped would otherwise
        log (and write the job log) after its owner, a test or the node, had closed both."""
        super().shutdown()
        self.gate.close_waiting()
        deadline = time.monotonic() + self.shutdown_join_seconds
        with self._connections_lock:
            running = [t for t in self._connections if t is not threading.current_thread()]
        for thread in running:
            thread.join(max(0.0, deadline - time.monotonic()))


def resolve_ae_hosts(settings: AdmissionSettings) -> dict[str, frozenset[str]]:
    """``ae_hosts`` as AE -> IP addresses, resolved once at start."""
    resolved: dict[str, frozenset[str]] = {}
    for ae, host in settings.ae_hosts.items():
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise ConfigError(
                f"ae_hosts (DICOM_NODE_AE_HOSTS): cannot resolve {host!r} for {ae}: {exc}"
            ) from None
        resolved[ae] = frozenset(_normal_ip(str(info[4][0])) for info in infos)
    return resolved


def _normal_ip(host: str) -> str:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _wait(waiting: _Waiting, deadline: float, timeout: float, write: bool) -> None:
    """Block until the socket is ready, the deadline passes (Refused) or it is evicted."""
    remaining = deadline - time.monotonic()
    if waiting.evicted:
        raise Refused("dropped")
    if remaining <= 0:
        raise Refused(f"no complete A-ASSOCIATE-RQ within {timeout:g} s")
    try:
        if write:
            select.select([], [waiting.sock], [], remaining)
        else:
            select.select([waiting.sock], [], [], remaining)
    except (OSError, ValueError):
        raise Refused("connection closed") from None


def _read(
    stream: socket.socket,
    size: int,
    waiting: _Waiting,
    deadline: float,
    timeout: float,
    first: bool = False,
) -> bytes:
    data = bytearray()
    while len(data) < size:
        try:
            chunk = stream.recv(size - len(data))
        except (BlockingIOError, ssl.SSLWantReadError):
            _wait(waiting, deadline, timeout, write=False)
            continue
        except ssl.SSLWantWriteError:
            _wait(waiting, deadline, timeout, write=True)
            continue
        except (ssl.SSLError, OSError) as exc:
            raise Refused(f"connection failed before the A-ASSOCIATE-RQ: {exc}") from None
        if not chunk:
            if waiting.evicted:
                raise Refused("dropped")
            if first and not data:
                raise Refused("closed the connection without a request", quiet=True)
            raise Refused("closed the connection in the middle of the A-ASSOCIATE-RQ")
        data += chunk
    return bytes(data)


# The ARTIM wait for the peer to close after A-ASSOCIATE-RJ.  A requestor busy with other
# associations (16 sending threads in one process, CI) can take longer than 0.5 s to read it.
REJECT_LINGER_SECONDS = 2.0


def _send_reject(stream: socket.socket, reject: tuple[int, int, int]) -> None:
    """Send the A-ASSOCIATE-RJ, then wait (briefly) for the requestor to close, as PS3.8's
    state machine does (AE-8, Sta13): closing at once can reset the connection before the
    peer has read the rejection, and it then sees an abort instead (seen once in CI)."""
    pdu = A_ASSOCIATE_RJ()
    pdu.result, pdu.source, pdu.reason_diagnostic = reject
    try:
        stream.setblocking(True)
        stream.settimeout(2.0)
        stream.sendall(pdu.encode())
        stream.settimeout(REJECT_LINGER_SECONDS)
        deadline = time.monotonic() + REJECT_LINGER_SECONDS
        while time.monotonic() < deadline and stream.recv(4096):
            pass  # anything the peer still sends is discarded; b"": it closed
    except (OSError, ValueError):
        pass


def _close(stream: socket.socket) -> None:
    with contextlib.suppress(OSError):
        socket.socket.shutdown(stream, socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        stream.close()


_TLS_REASONS = {
    "WRONG_VERSION_NUMBER": "the peer did not start TLS (plain DICOM on the TLS port?)",
    "HTTP_REQUEST": "the peer did not start TLS (an HTTP request)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the peer sent no client certificate",
    "UNSUPPORTED_PROTOCOL": "the peer offered only TLS versions below 1.2",
    "NO_SHARED_CIPHER": "no cipher in common with the peer",
}


def _tls_reason(exc: BaseException) -> str:
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
    text = str(reason or exc)
    return _TLS_REASONS.get(text, text)


def _peer_of(assoc: Association) -> Peer:
    requestor = assoc.requestor
    peer = Peer(str(requestor.address), int(requestor.port))
    peer.calling_ae = str(requestor.ae_title).strip()
    return peer

"""STOW-RS intake (PS3.18 10.5): ``POST /dicom-web/studies[/{StudyInstanceUID}]``.

For senders that do not speak DIMSE.  Off unless ``dicomweb_port`` is set.  Each request is
spooled to disk as it arrives (``Content-Length`` or chunked; memory stays flat whatever its
size); its multipart structure is checked and its parts counted before anything is filed;
then every ``application/dicom`` part goes through the C-STORE path's own checks and filing
(``filing.file_part10``): same statuses, job-log rows, quarantine and audit trail.  A request
counts as a released association: its studies start after ``release_grace_seconds``.

Responses (PS3.18 10.5.3): 200 all stored, 202 some stored, 409 none stored, each with an
``application/dicom+json`` body listing Referenced SOP Sequence / Failed SOP Sequence (Failure
Reason = the DICOM status).  A request refused whole (nothing filed) gets a JSON ``{"error":
reason}``: 400 malformed (framing, multipart structure, no parts), 408 the client stopped
sending for ``network_timeout_seconds``, 411 no length, 413 larger than the free disk space
allows or more than ``stow_max_parts_per_request`` parts, 415 not ``multipart/related;
type="application/dicom"``, 501 a transfer coding other than chunked, 503 busy
(``maximum_associations``), 507 the disk filled up while the body was received.  A part
that cannot be written once the body is in (the disk filled up) is a failed part, ``0xA700``.

Framing (RFC 9112): exactly one ``Content-Length`` of decimal digits, or ``Transfer-Encoding:
chunked`` alone (never both); chunk sizes are 1 to 16 hex digits, chunk extensions are
ignored, every chunk must end with CRLF.  Every temporary file of a request (the spooled
body, the part being filed) is removed when the request ends, however it ends.

Per request, the first ``INDIVIDUAL_REFUSALS`` refused parts are quarantined, logged and
recorded one by one like refused C-STOREs; later refusals are counted and summarised in one
log line and one job-log rejection (each still has its Failed SOP Sequence item), so one
request of garbage parts cannot flood the disk, the log and ``dicom-node jobs``.  When the job
log is unavailable (locked), the part that finds it so waits its busy timeout (about 2 s) and
the request's remaining parts are refused at once with ``0xA700``.

The connection handling, deadlines, TLS and client authentication are ``web``'s
(``dicomweb_tls``, ``dicomweb_auth``, ``http_*``); a request the guard drops mid-body fails its
read, and nothing of it stays behind.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import mmap
import os
import re
import sys
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.admin.audit import AuditLog
from dicom_node.errors import DicomStatus, IntakeRefused
from dicom_node.intake.filing import (
    Accepted,
    FilingOutcome,
    Intake,
    IntakeSettings,
    count_refusal,
    file_part10,
)
from dicom_node.logs import clean
from dicom_node.storage import free_disk_mb, is_safe_uid
from dicom_node.web import GuardedHandler, GuardedHTTPServer, PortPolicy

log = logging.getLogger(__name__)

CALLING_AE = "DICOMWEB"  # what the job log's calling_ae column says for STOW-RS instances
_ROUTE = re.compile(r"^/dicom-web/studies(?:/(?P<study>[0-9.]+))?/?$")
_CHUNK = 1 << 20
MIB = 1024 * 1024
# Refused parts of one request that are quarantined, logged and recorded one by one; the
# request's later refusals are summarised (one log line, one job-log rejection).
INDIVIDUAL_REFUSALS = 10
# A part's file meta (a few hundred bytes) is read from this much of its start.
_META_WINDOW = 64 * 1024
# RFC 9112 7.1: chunk-size [ chunk-ext ] CRLF; the size bounded to 16 hex digits.
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r\n")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
MAX_LINE_BYTES = 4096  # a chunk-size line with its extensions, or one trailer field
MAX_TRAILER_FIELDS = 64
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class RequestRefused(IntakeRefused):
    """The whole request is refused with an HTTP status (nothing was filed)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _WriteFailed(Exception):
    """Writing a temporary file failed; ``disk_full`` for ENOSPC / EDQUOT."""

    def __init__(self, exc: OSError) -> None:
        self.disk_full = exc.errno in _DISK_FULL
        self.what = "out of disk space" if self.disk_full else type(exc).__name__
        super().__init__(self.what)


@dataclass(frozen=True)
class PartOutcome:
    sop_class: str
    sop_instance: str
    filing: FilingOutcome


@dataclass(frozen=True)
class StowPeer:
    """One STOW-RS request, standing in for an association in the audit trail and assembly."""

    address: str
    request_id: str

    def fields(self) -> dict[str, Any]:
        return {"association": self.request_id, "calling_ae": CALLING_AE, "peer": self.address}


@dataclass
class _Request:
    """One request's parts as they are filed, and its refusals past the individual ones."""

    peer: StowPeer
    study_uid: str | None
    outcomes: list[PartOutcome] = field(default_factory=list)
    refused_individually: int = 0
    summarised: Counter[tuple[int, str]] = field(default_factory=Counter)
    joblog_unavailable: bool = False


@dataclass(frozen=True)
class _Framing:
    """What the headers say of the body: its boundary, its length (None: chunked), and how
    much of the free disk it may take."""

    boundary: bytes
    length: int | None
    room_bytes: int


class StowServer:
    def __init__(
        self,
        intake: Intake,
        accepted: Accepted,
        audit: AuditLog | None = None,
        policy: PortPolicy | None = None,
    ) -> None:
        settings = intake.settings
        assert settings.dicomweb_port is not None
        self._intake = intake
        self._accepted = accepted
        self._audit = audit
        self._slots = threading.BoundedSemaphore(settings.maximum_associations)
        self._server = GuardedHTTPServer(
            (settings.dicomweb_host, settings.dicomweb_port),
            self._handler_class(),
            policy or PortPolicy("STOW-RS"),
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="stow-rs", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        policy = self._server.policy
        log.info(
            "STOW-RS intake on %s/dicom-web/studies (%s)",
            self._server.url,
            policy.access.describe(),
        )

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def store(self, handler: BaseHTTPRequestHandler, study_uid: str | None) -> tuple[int, bytes]:
        """Serve one STOW-RS request: (HTTP status, JSON body)."""
        if not self._slots.acquire(blocking=False):
            raise RequestRefused(503, "busy: maximum_associations requests in progress")
        settings = self._intake.settings
        request = _Request(
            StowPeer(handler.client_address[0], f"stow-{uuid.uuid4().hex[:12]}"), study_uid
        )
        if self._audit is not None:
            self._audit.association("accepted", **request.peer.fields())
        try:
            framing = _framing(handler.headers, settings)
            source: BinaryIO = handler.rfile  # type: ignore[assignment]
            with _spooled(source, framing, settings.data_dir) as data:
                spans = _locate_parts(data, framing.boundary, settings.stow_max_parts_per_request)
                for start, end in spans:
                    request.outcomes.append(self._file(data, start, end, request))
        finally:
            self._slots.release()
            self._summarise(request)
            self._ended(request)
        stored = sum(1 for o in request.outcomes if o.filing.status == DicomStatus.SUCCESS)
        code = 200 if stored == len(request.outcomes) else 202 if stored else 409
        return code, json.dumps(_response(request.outcomes)).encode()

    def _file(self, data: mmap.mmap, start: int, end: int, request: _Request) -> PartOutcome:
        sop_class, sop_instance = _meta_uids(data[start : min(end, start + _META_WINDOW)])
        if request.joblog_unavailable:  # waiting again, per part, would hold the request
            filing = self._refuse(request, sop_instance, "the job log is unavailable")
            return PartOutcome(sop_class, sop_instance, filing)
        individually = request.refused_individually < INDIVIDUAL_REFUSALS
        try:
            with _part_file(data, start, end, self._intake.settings.data_dir) as part:
                filing = file_part10(
                    part,
                    self._intake,
                    CALLING_AE,
                    request.peer,
                    self._accepted,
                    request.study_uid,
                    record_refusal=individually,
                )
        except _WriteFailed as failed:
            reason = f"writing the part to disk failed ({failed.what})"
            return PartOutcome(sop_class, sop_instance, self._refuse(request, sop_instance, reason))
        request.joblog_unavailable |= filing.joblog_unavailable
        if filing.status != DicomStatus.SUCCESS:
            if individually:
                request.refused_individually += 1
            else:
                request.summarised[(filing.status, filing.reason or "")] += 1
        return PartOutcome(sop_class, sop_instance, filing)

    def _refuse(self, request: _Request, sop_uid: str, reason: str) -> FilingOutcome:
        """A part refused here, without filing: ``0xA700``, summarised with the request."""
        status = DicomStatus.OUT_OF_RESOURCES
        count_refusal(self._intake, request.peer, sop_uid, status)
        request.summarised[(status, reason)] += 1
        return FilingOutcome(status, reason)

    def _summarise(self, request: _Request) -> None:
        """One log line and one job-log rejection for the refusals not recorded one by one."""
        count = sum(request.summarised.values())
        if not count:
            return
        common = request.summarised.most_common(3)
        details = "; ".join(f"{n} x 0x{status:04X} {reason}" for (status, reason), n in common)
        if len(request.summarised) > len(common):
            details += "; ..."
        summary = (
            f"{count} part(s) of STOW-RS request {request.peer.request_id} refused "
            f"(summarised, not quarantined or recorded one by one): {details}"
        )
        if request.joblog_unavailable:
            log.error("%s; not recorded: the job log is unavailable", summary)
            return
        log.warning("%s", summary)
        (status, _), _ = common[0]
        try:
            self._intake.joblog.record_rejection(CALLING_AE, status, summary)
        except SQLAlchemyError as exc:
            log.error("could not record a refusal in the job log: %s", type(exc).__name__)

    def _ended(self, request: _Request) -> None:
        peer = request.peer
        if self._intake.on_association_end is not None:
            # An exception on its way out of ``store`` (a client gone mid-upload): not released.
            self._intake.on_association_end(id(peer), sys.exc_info()[0] is None)
        if self._audit is not None:
            self._audit.association_ended(peer, "released", **peer.fields())
        log.info("STOW-RS request from %s: %d instance(s)", peer.address, len(request.outcomes))

    def _handler_class(self) -> type[GuardedHandler]:
        server = self
        settings = self._intake.settings

        class Handler(GuardedHandler):
            protocol_version = "HTTP/1.1"  # answers "Expect: 100-continue" (libcurl sends it)
            # A request line without a valid version is answered with a status line, not in
            # HTTP/0.9 style (a bare body that no HTTP/1 client can read).
            default_request_version = "HTTP/1.0"
            # A client that stops sending is dropped after this long (socket timeout).
            timeout = settings.network_timeout_seconds

            def handle(self) -> None:
                try:
                    super().handle()
                except OSError as exc:  # the client went away before the request was read
                    log.debug("stow-rs http: connection ended (%s)", type(exc).__name__)

            def finish(self) -> None:
                with contextlib.suppress(OSError):  # the client left before the answer
                    super().finish()

            def handle_expect_100(self) -> bool:
                """Refuse what the headers already tell before the client sends the body."""
                if self.command == "POST" and _ROUTE.match(self.path.split("?", 1)[0]):
                    try:
                        _framing(self.headers, settings)
                    except RequestRefused as refused:
                        self._refused(refused)
                        return False
                return super().handle_expect_100()

            def do_POST(self) -> None:
                match = _ROUTE.match(self.path.split("?", 1)[0])
                if match is None:
                    self._reply(404, b'{"error": "not found: POST /dicom-web/studies"}')
                    return
                study = match["study"]
                try:
                    if study is not None and not is_safe_uid(study):
                        raise RequestRefused(400, "the Study Instance UID in the URL is invalid")
                    code, body = server.store(self, study)
                except RequestRefused as refused:
                    self._refused(refused)
                    return
                except TimeoutError:
                    self._refused(RequestRefused(408, "the client stopped sending"))
                    return
                except OSError as exc:  # the client went away
                    log.warning("STOW-RS request failed: %s", type(exc).__name__)
                    self.close_connection = True
                    return
                except Exception:  # a bug: answer, keep serving
                    log.exception("unexpected error in a STOW-RS request")
                    self._reply(500, b'{"error": "internal error"}')
                    return
                self._reply(code, body, "application/dicom+json")

            def do_GET(self) -> None:
                self._not_allowed()

            do_PUT = do_DELETE = do_PATCH = do_GET

            def do_HEAD(self) -> None:
                self._not_allowed(send_body=False)

            def _not_allowed(self, send_body: bool = True) -> None:
                body = b'{"error": "this endpoint only stores: POST /dicom-web/studies"}'
                self._reply(405, body, headers={"Allow": "POST"}, send_body=send_body)

            def _refused(self, refused: RequestRefused) -> None:
                log.warning("STOW-RS request refused (%d): %s", refused.code, refused.reason)
                headers = {"Retry-After": "5"} if refused.code == 503 else {}
                body = json.dumps({"error": refused.reason}).encode()
                self._reply(refused.code, body, headers=headers)

            def _reply(
                self,
                code: int,
                body: bytes,
                kind: str = "application/json",
                headers: dict[str, str] | None = None,
                send_body: bool = True,
            ) -> None:
                self.close_connection = True  # a body may be left unread: never reuse
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if send_body:
                        self.wfile.write(body)
                except OSError as exc:
                    log.debug("stow-rs http: the answer was not delivered (%s)", type(exc).__name__)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("stow-rs http: " + format, *args)

        return Handler


def _framing(headers: Message, settings: IntakeSettings) -> _Framing:
    """What can be checked before the body is read (PS3.18 10.5.1, RFC 9112 6)."""
    boundary = _boundary(headers)
    chunked = _is_chunked(headers.get_all("Transfer-Encoding") or [])
    lengths = headers.get_all("Content-Length") or []
    if chunked and lengths:
        raise RequestRefused(400, "Content-Length and Transfer-Encoding together")
    if len(lengths) > 1:
        raise RequestRefused(400, "more than one Content-Length")
    free_bytes = (free_disk_mb(settings.data_dir) - settings.min_free_disk_mb) * MIB
    room = max(0, int(free_bytes))
    if chunked:
        return _Framing(boundary, None, room)
    if not lengths:
        raise RequestRefused(411, "Content-Length or chunked transfer encoding required")
    text = str(lengths[0]).strip()
    if not _CONTENT_LENGTH.fullmatch(text):
        raise RequestRefused(400, "Content-Length is not a decimal number of bytes")
    length = int(text)
    if length == 0:
        raise RequestRefused(400, "empty request body")
    if length > room:
        raise RequestRefused(413, "the request is larger than the free disk space allows")
    return _Framing(boundary, length, room)


def _is_chunked(values: list[str]) -> bool:
    """Whether the body is chunked; any other transfer coding is refused (RFC 9112 6.1)."""
    if not values:
        return False
    codings = [c.strip().lower() for value in values for c in str(value).split(",")]
    codings = [c for c in codings if c]
    unsupported = sorted({c for c in codings if c != "chunked"})
    if unsupported:
        named = clean(", ".join(unsupported), 60)
        raise RequestRefused(501, f"transfer coding not supported (only chunked): {named}")
    if codings != ["chunked"]:
        raise RequestRefused(400, "Transfer-Encoding must name chunked once")
    return True


def _boundary(headers: Message) -> bytes:
    message = Message()
    message["Content-Type"] = headers.get("Content-Type", "")
    if message.get_content_type() != "multipart/related":
        raise RequestRefused(415, "expected Content-Type multipart/related")
    kind = message.get_param("type")
    if isinstance(kind, str) and kind.lower() != "application/dicom":
        raise RequestRefused(415, f"only type=application/dicom is accepted, not {clean(kind)}")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise RequestRefused(400, "multipart/related without a boundary")
    try:
        return boundary.encode("latin-1")
    except UnicodeEncodeError:
        raise RequestRefused(400, "the boundary is not ASCII") from None


@contextmanager
def _spooled(source: BinaryIO, framing: _Framing, directory: Path) -> Iterator[mmap.mmap]:
    """The body in a temporary file beside the inbox, mapped for splitting; the file is
    removed when the request ends, however it ends."""
    try:
        fd, path = _temporary_file(directory)
    except _WriteFailed as failed:
        raise _spool_refusal(failed) from None
    try:
        with os.fdopen(fd, "w+b") as out:
            _fill(out, source, framing)
            with mmap.mmap(out.fileno(), 0, access=mmap.ACCESS_READ) as data:
                yield data
    finally:
        path.unlink(missing_ok=True)


def _fill(out: BinaryIO, source: BinaryIO, framing: _Framing) -> None:
    """Copy the body from the socket to the spool file (refusals as ``RequestRefused``)."""
    blocks = _chunked(source) if framing.length is None else _sized(source, framing.length)
    written = 0
    try:
        for block in blocks:
            written += len(block)
            if written > framing.room_bytes:
                raise RequestRefused(413, "the request is larger than the free disk space allows")
            _write(out, block)
        _flush(out)
    except _WriteFailed as failed:
        raise _spool_refusal(failed) from None
    if written == 0:
        raise RequestRefused(400, "empty request body")


def _spool_refusal(failed: _WriteFailed) -> RequestRefused:
    if failed.disk_full:
        return RequestRefused(507, "the disk filled up while the request was received")
    return RequestRefused(500, f"writing the request to disk failed ({failed.what})")


@contextmanager
def _part_file(data: mmap.mmap, start: int, end: int, directory: Path) -> Iterator[Path]:
    """One part's content in a temporary file, for filing to move (to the inbox or
    quarantine); removed on the way out if it is still there."""
    fd, path = _temporary_file(directory)
    try:
        with os.fdopen(fd, "wb") as out:
            for offset in range(start, end, _CHUNK):  # in blocks: parts can be hundreds of MB
                _write(out, data[offset : min(offset + _CHUNK, end)])
            _flush(out)
        yield path
    finally:
        path.unlink(missing_ok=True)


def _temporary_file(directory: Path) -> tuple[int, Path]:
    """A new ``.tmp-stow-*.part`` file (removed at start if a crash left it)."""
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-stow-", suffix=".part")
    except OSError as exc:
        raise _WriteFailed(exc) from None
    return fd, Path(name)


def _write(out: BinaryIO, block: bytes) -> None:
    try:
        out.write(block)
    except OSError as exc:
        raise _WriteFailed(exc) from None


def _flush(out: BinaryIO) -> None:
    try:
        out.flush()
    except OSError as exc:
        raise _WriteFailed(exc) from None


def _sized(source: BinaryIO, length: int) -> Iterator[bytes]:
    left = length
    while left > 0:
        block = source.read(min(_CHUNK, left))
        if not block:
            raise RequestRefused(400, "the body ended early")
        left -= len(block)
        yield block


def _chunked(source: BinaryIO) -> Iterator[bytes]:
    """Decode ``Transfer-Encoding: chunked`` (RFC 9112 7.1) strictly: 1-16 hex digits, chunk
    extensions ignored, CRLF after every line and chunk; trailer fields read and ignored."""
    while True:
        match = _CHUNK_SIZE_LINE.fullmatch(_line(source))
        if match is None:
            raise RequestRefused(400, "malformed chunk size line")
        size = int(match[1], 16)
        if size == 0:
            _skip_trailers(source)
            return
        yield from _sized(source, size)
        if source.read(2) != b"\r\n":
            raise RequestRefused(400, "a chunk is not followed by CRLF")


def _line(source: BinaryIO) -> bytes:
    line = source.readline(MAX_LINE_BYTES + 1)
    if not line.endswith(b"\n"):
        if len(line) > MAX_LINE_BYTES:
            raise RequestRefused(
                400, f"a chunked-encoding line is longer than {MAX_LINE_BYTES} bytes"
            )
        raise RequestRefused(400, "the body ended early")
    return line


def _skip_trailers(source: BinaryIO) -> None:
    for _ in range(MAX_TRAILER_FIELDS + 1):
        line = _line(source)
        if line == b"\r\n":
            return
        if not line.endswith(b"\r\n"):
            raise RequestRefused(400, "a trailer field does not end with CRLF")
    raise RequestRefused(400, f"more than {MAX_TRAILER_FIELDS} trailer fields")


def _locate_parts(data: mmap.mmap, boundary: bytes, max_parts: int) -> list[tuple[int, int]]:
    """Where each body part's content lies (RFC 2046 5.1.1): the whole structure is checked,
    and the parts counted, before anything is filed."""
    delimiter = b"--" + boundary
    position = data.find(delimiter)
    if position < 0:
        raise RequestRefused(400, "the boundary does not occur in the body")
    spans: list[tuple[int, int]] = []
    while True:
        position += len(delimiter)
        if data[position : position + 2] == b"--":
            break  # close delimiter
        line_end = data.find(b"\r\n", position)
        if line_end < 0 or data[position:line_end].strip(b" \t"):
            raise RequestRefused(400, "a boundary delimiter is not followed by CRLF")
        following = data.find(b"\r\n" + delimiter, line_end)
        if following < 0:
            raise RequestRefused(400, "a body part is not terminated by the boundary")
        headers_end = data.find(b"\r\n\r\n", line_end, following + 4)
        if headers_end < 0:
            raise RequestRefused(400, "a body part has no end of its headers")
        if len(spans) == max_parts:
            raise RequestRefused(
                413,
                f"more than {max_parts} parts in one request (stow_max_parts_per_request): "
                "send them in several requests",
            )
        spans.append((min(headers_end + 4, following), following))
        position = following + 2
    if not spans:
        raise RequestRefused(400, "no parts in the multipart body")
    return spans


def _meta_uids(head: bytes) -> tuple[str, str]:
    """A part's SOP Class / Instance UIDs from its file meta, for the response ('' if none)."""
    try:  # pydicom parses values lazily: a broken one raises at get()
        meta = pydicom.filereader.read_partial(io.BytesIO(head), stop_when=_at_once).file_meta
        sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
        sop_instance = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
    except Exception:
        return "", ""
    return (
        sop_class if is_safe_uid(sop_class) else "",
        sop_instance if is_safe_uid(sop_instance) else "",
    )


def _at_once(*_: object) -> bool:
    return True  # read_partial: stop at the first data set element, after the file meta


def _response(outcomes: list[PartOutcome]) -> dict[str, Any]:
    """The STOW-RS response data set in the DICOM JSON model (PS3.18 F.2)."""

    def uid(value: str) -> dict[str, Any]:
        return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}

    referenced, failed = [], []
    for outcome in outcomes:
        item = {"00081150": uid(outcome.sop_class), "00081155": uid(outcome.sop_instance)}
        if outcome.filing.status == DicomStatus.SUCCESS:
            referenced.append(item)
        else:
            failed.append({**item, "00081197": {"vr": "US", "Value": [outcome.filing.status]}})
    body: dict[str, Any] = {}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    return body

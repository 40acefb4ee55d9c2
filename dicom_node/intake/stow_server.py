"""STOW-RS intake (PS3.18 10.5): ``POST /dicom-web/studies[/{StudyInstanceUID}]``.

For senders that do not speak DIMSE.  Off unless ``dicomweb_port`` is set.  Each request is
spooled to disk as it arrives (``Content-Length`` or chunked; memory stays flat whatever its
size), split into its ``application/dicom`` parts, and every part goes through the C-STORE
path's own checks and filing (``filing.file_part10``): same statuses, job-log rows,
quarantine and audit trail.  A request counts as a released association: its studies start
after ``release_grace_seconds``.

Responses (PS3.18 10.5.3): 200 all stored, 202 some stored, 409 none stored, each with an
``application/dicom+json`` body listing Referenced SOP Sequence / Failed SOP Sequence (Failure
Reason = the DICOM status); 400 malformed, 413 too large for the free disk, 415 not
``multipart/related; type="application/dicom"``, 503 busy (``maximum_associations``).

The connection handling, deadlines, TLS and client authentication are ``web``'s
(``dicomweb_tls``, ``dicomweb_auth``, ``http_*``); a request the guard drops mid-body fails its
read, and nothing of it stays behind.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, BinaryIO

import pydicom

from dicom_node.admin.audit import AuditLog
from dicom_node.errors import DicomStatus, IntakeRefused
from dicom_node.intake.filing import Accepted, FilingOutcome, Intake, IntakeSettings, file_part10
from dicom_node.logs import clean
from dicom_node.storage import free_disk_mb, is_safe_uid
from dicom_node.web import GuardedHandler, GuardedHTTPServer, PortPolicy

log = logging.getLogger(__name__)

CALLING_AE = "DICOMWEB"  # what the job log's calling_ae column says for STOW-RS instances
_ROUTE = re.compile(r"^/dicom-web/studies(?:/(?P<study>[0-9.]+))?/?$")
_CHUNK = 1 << 20
MIB = 1024 * 1024


class RequestRefused(IntakeRefused):
    """The whole request is refused with an HTTP status (nothing was filed)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


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
        peer = StowPeer(handler.client_address[0], f"stow-{uuid.uuid4().hex[:12]}")
        if self._audit is not None:
            self._audit.association("accepted", **peer.fields())
        outcomes: list[PartOutcome] = []
        try:
            boundary = _boundary(handler.headers)
            with _SpooledBody(handler, self._intake.settings) as body:
                for part in _parts(body, boundary):
                    outcomes.append(self._file(part, peer, study_uid))
        finally:
            self._slots.release()
            self._ended(peer, outcomes)
        if not outcomes:
            raise RequestRefused(400, "no parts in the multipart body")
        stored = sum(1 for o in outcomes if o.filing.status == DicomStatus.SUCCESS)
        code = 200 if stored == len(outcomes) else 202 if stored else 409
        return code, json.dumps(_response(outcomes)).encode()

    def _file(self, part: Path, peer: StowPeer, study_uid: str | None) -> PartOutcome:
        sop_class, sop_instance = _meta_uids(part)
        try:
            filing = file_part10(part, self._intake, CALLING_AE, peer, self._accepted, study_uid)
        finally:
            part.unlink(missing_ok=True)  # only left when the disk refused it (not quarantined)
        return PartOutcome(sop_class, sop_instance, filing)

    def _ended(self, peer: StowPeer, outcomes: list[PartOutcome]) -> None:
        if self._intake.on_association_end is not None:
            self._intake.on_association_end(id(peer), True)
        if self._audit is not None:
            self._audit.association_ended(peer, "released", **peer.fields())
        log.info("STOW-RS request from %s: %d instance(s)", peer.address, len(outcomes))

    def _handler_class(self) -> type[GuardedHandler]:
        server = self

        class Handler(GuardedHandler):
            protocol_version = "HTTP/1.1"  # answers "Expect: 100-continue" (libcurl sends it)
            # A client that stops sending is dropped after this long (socket timeout).
            timeout = server._intake.settings.network_timeout_seconds

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
                    log.warning("STOW-RS request refused (%d): %s", refused.code, refused.reason)
                    self._reply(refused.code, json.dumps({"error": refused.reason}).encode())
                    return
                except (OSError, TimeoutError) as exc:
                    log.warning("STOW-RS request failed: %s", type(exc).__name__)
                    self.close_connection = True
                    return
                self._reply(code, body, "application/dicom+json")

            def do_GET(self) -> None:
                self._reply(405, b'{"error": "this endpoint only stores (STOW-RS)"}')

            def _reply(self, code: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                if code == 503:
                    self.send_header("Retry-After", "5")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("stow-rs http: " + format, *args)

        return Handler


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
    return boundary.encode("latin-1")


class _SpooledBody:
    """The request body in a temporary file beside the inbox, mapped for splitting."""

    def __init__(self, handler: BaseHTTPRequestHandler, settings: IntakeSettings) -> None:
        self._handler = handler
        self._settings = settings
        self._dir: Path = settings.data_dir
        self._path: Path | None = None
        self._map: mmap.mmap | None = None
        self._file: BinaryIO | None = None

    def __enter__(self) -> _Body:
        try:
            return self._receive()
        except BaseException:
            self.__exit__()  # a read that failed (a dropped client) leaves no spool file behind
            raise

    def _receive(self) -> _Body:
        room_mb = free_disk_mb(self._dir) - self._settings.min_free_disk_mb
        length = self._handler.headers.get("Content-Length")
        chunked = "chunked" in self._handler.headers.get("Transfer-Encoding", "").lower()
        if not chunked and length is None:
            raise RequestRefused(411, "Content-Length or chunked transfer encoding required")
        if length is not None and not chunked and int(length) > room_mb * MIB:
            raise RequestRefused(413, "the request is larger than the free disk space allows")
        fd, name = tempfile.mkstemp(dir=self._dir, prefix=".tmp-stow-", suffix=".part")
        self._path = Path(name)
        self._file = os.fdopen(fd, "w+b")
        source: BinaryIO = self._handler.rfile  # type: ignore[assignment]
        limit = int(room_mb * MIB)
        written = 0
        for block in _chunked(source) if chunked else _sized(source, int(length or 0)):
            written += len(block)
            if written > limit:
                raise RequestRefused(413, "the request is larger than the free disk space allows")
            self._file.write(block)
        self._file.flush()
        if written == 0:
            raise RequestRefused(400, "empty request body")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return _Body(self._map, self._dir)

    def __exit__(self, *exc: object) -> None:
        if self._map is not None:
            self._map.close()
        if self._file is not None:
            self._file.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)


@dataclass
class _Body:
    data: mmap.mmap
    directory: Path


def _sized(source: BinaryIO, length: int) -> Iterator[bytes]:
    left = length
    while left > 0:
        block = source.read(min(_CHUNK, left))
        if not block:
            raise RequestRefused(400, "the body ended early")
        left -= len(block)
        yield block


def _chunked(source: BinaryIO) -> Iterator[bytes]:
    """Decode ``Transfer-Encoding: chunked`` (RFC 9112 7.1); trailers are read and ignored."""
    while True:
        line = source.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise RequestRefused(400, "malformed chunked encoding") from None
        if size == 0:
            while source.readline(1024) not in (b"\r\n", b"\n", b""):
                pass
            return
        yield from _sized(source, size)
        source.readline(16)  # the CRLF after each chunk


def _parts(body: _Body, boundary: bytes) -> Iterator[Path]:
    """Each body part's content as a temporary file (RFC 2046 5.1.1 delimiters)."""
    data = body.data
    delimiter = b"--" + boundary
    position = data.find(delimiter)
    if position < 0:
        raise RequestRefused(400, "the boundary does not occur in the body")
    while True:
        position += len(delimiter)
        if data[position : position + 2] == b"--":
            return  # close delimiter
        headers_end = data.find(b"\r\n\r\n", position)
        following = data.find(b"\r\n" + delimiter, position)
        if headers_end < 0 or following < 0 or headers_end > following:
            raise RequestRefused(400, "a body part is not terminated by the boundary")
        start, end = headers_end + 4, following
        fd, name = tempfile.mkstemp(dir=body.directory, prefix=".tmp-stow-", suffix=".part")
        with os.fdopen(fd, "wb") as out:
            offset = start
            while offset < end:  # copy in blocks: parts can be hundreds of MB
                out.write(data[offset : min(offset + _CHUNK, end)])
                offset += _CHUNK
        yield Path(name)
        position = following + 2


def _meta_uids(path: Path) -> tuple[str, str]:
    """The part's SOP Class / Instance UIDs from its file meta, for the response ('' if none)."""
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:
        return "", ""
    sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
    sop_instance = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
    return (
        sop_class if is_safe_uid(sop_class) else "",
        sop_instance if is_safe_uid(sop_instance) else "",
    )


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

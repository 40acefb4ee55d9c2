"""An in-process node SCP with its audit trail (and TLS when the settings say so), and the
raw-socket and pynetdicom clients the front-door tests use (``dicom_node.intake.admission``)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.admin.audit import AuditLog
from dicom_node.admin.metrics import Metrics
from dicom_node.config import Settings
from dicom_node.intake.filing import Intake
from dicom_node.intake.scp import start_scp
from dicom_node.joblog import JobLog
from tests.support.dicom_client import rejection_left_unread
from tests.support.net import free_port


@dataclass
class Node:
    settings: Settings
    joblog: JobLog
    audit: AuditLog

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.path.read_text().splitlines()]

    def wait_audit(self, ended: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The audit lines once ``ended`` associations have written their end."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.audit_lines()
            done = sum(e["event"] == "association_end" for e in lines)
            if done >= ended or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


def start_audited_scp(tmp_path: Path, **overrides: Any) -> Iterator[Node]:
    values: dict[str, Any] = {
        "fsync": False,
        "min_free_disk_mb": 0,
        "allowed_aes": ("MODALITY", "OTHER"),
        **overrides,
    }
    settings = Settings(data_dir=tmp_path / "data", port=free_port(), **values)
    joblog = JobLog.open(settings.database_path)
    audit = AuditLog.for_settings(settings)
    intake = Intake(settings, joblog.intake, Metrics(), lambda _outcome, _association: None, audit)
    server = start_scp(settings, intake)
    try:
        yield Node(settings, joblog, audit)
    finally:
        server.shutdown()
        audit.close()
        joblog.close()


audited_scp = contextlib.contextmanager(start_audited_scp)


@dataclass
class Outcome:
    assoc: Association
    # (result, source, reason) of an A-ASSOCIATE-RJ, None when accepted or no answer.
    reject: tuple[int, int, int] | None


def associate(
    node: Node,
    calling_ae: str = "MODALITY",
    *contexts: str,
    tls: ssl.SSLContext | None = None,
) -> Outcome:
    """Associate from ``calling_ae`` (over TLS with ``tls``); the RJ reason if refused."""
    answers: list[Any] = []
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    for uid in contexts:
        ae.add_requested_context(uid)
    assoc = ae.associate(
        "127.0.0.1",
        node.settings.port,
        ae_title=node.settings.ae_title,
        evt_handlers=[(evt.EVT_ACSE_RECV, lambda event: answers.append(event.primitive))],
        tls_args=(tls, "127.0.0.1") if tls is not None else None,
    )
    unread = rejection_left_unread(assoc)
    if unread is not None:
        answers.append(unread)
    reject = None
    for primitive in answers:
        if getattr(primitive, "result", None) not in (None, 0):
            reject = (primitive.result, primitive.result_source, primitive.diagnostic)
    return Outcome(assoc, reject)


def echo_within(node: Node, seconds: float, tls: ssl.SSLContext | None = None) -> float:
    """C-ECHO from an allowed AE; returns how long association + echo took."""
    started = time.monotonic()
    outcome = associate(node, tls=tls)
    assert outcome.assoc.is_established, outcome.reject
    assert int(outcome.assoc.send_c_echo().Status) == 0
    outcome.assoc.release()
    took = time.monotonic() - started
    assert took < seconds
    return took


def idle_sockets(node: Node, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", node.settings.port), timeout=10)
        sockets.append(sock)
    return sockets


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def drip(sockets: list[socket.socket], stop: threading.Event, every: float = 1.0) -> None:
    """Send an A-ASSOCIATE-RQ header one byte per ``every`` seconds on each socket (slowloris)."""
    header = b"\x01\x00\x00\x00\x01\x00"
    for index in range(600):
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.send(header[index % 6 : index % 6 + 1])
        if stop.wait(every):
            return

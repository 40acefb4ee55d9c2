"""A C-STORE SCU that sends data set bytes exactly as given (the fuzz suite's modality).

pynetdicom's ``send_c_store`` encodes a ``Dataset`` itself; the fuzzer needs to put damaged
bytes and invalid request UIDs on the wire, so ``StoreSession.store`` builds the C-STORE
request primitive and drives the association's DIMSE provider the way ``send_c_store`` does.
Each transfer syntax gets a presentation context of its own, so the context an item names is
the one used.  Every outcome is classified: a status, ``no-context`` (not negotiated),
``aborted`` (the association ended before the answer), ``no-response`` (DIMSE timeout).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from io import BytesIO
from types import TracebackType
from typing import Any

from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support.mutations import PROPOSED_SYNTAXES, STORAGE_CLASSES, UNSUPPORTED_CLASSES, Item

SUCCESS = 0x0000


@dataclass(frozen=True)
class StoreOutcome:
    category: str  # "0x0000", "0xA900", ..., "no-context", "aborted", "no-response"
    status: int | None
    seconds: float

    @property
    def accepted(self) -> bool:
        """Stored: success, or a warning (0x0001, 0xB000-0xBFFF: stored with coercion)."""
        return self.status is not None and (
            self.status in (0x0000, 0x0001) or self.status >> 12 == 0xB
        )

    @property
    def refused(self) -> bool:
        return self.status is not None and not self.accepted


def status_category(status: int) -> str:
    return f"0x{status:04X}"


def requested_contexts() -> list[tuple[str, str]]:
    """(SOP class, transfer syntax) pairs, one per context (at most 128)."""
    pairs = [(c, str(ts)) for c in STORAGE_CLASSES for ts in PROPOSED_SYNTAXES]
    pairs += [(c, "1.2.840.10008.1.2.1") for c in UNSUPPORTED_CLASSES]
    return pairs


class StoreSession:
    """One association to the node offering every context the fuzzer may use."""

    def __init__(
        self,
        host: str,
        port: int,
        calling_ae: str = "FUZZER",
        called_ae: str = "AINODE",
        timeout: float = 20.0,
    ) -> None:
        self.host, self.port = host, port
        self.timeout = timeout
        self.ae = AE(ae_title=calling_ae)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout
        for sop_class, syntax in requested_contexts():
            self.ae.add_requested_context(sop_class, [syntax])
        self.called_ae = called_ae
        self.assoc: Association | None = None
        self._message_id = 0

    def __enter__(self) -> StoreSession:
        self.assoc = self.ae.associate(self.host, self.port, ae_title=self.called_ae)
        _no_delay(self.assoc)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def established(self) -> bool:
        return self.assoc is not None and self.assoc.is_established

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
            if self.assoc.is_established:  # no A-RELEASE-RP
                self.assoc.abort()

    def _context_id(self, item: Item) -> int | None:
        assert self.assoc is not None
        for context in self.assoc.accepted_contexts:
            if (
                context.abstract_syntax == item.context_sop_class
                and context.transfer_syntax[0] == item.transfer_syntax
            ):
                return int(context.context_id)  # type: ignore[arg-type]
        return None

    def store(self, item: Item) -> StoreOutcome:
        started = time.monotonic()
        if not self.established:
            return StoreOutcome("aborted", None, 0.0)
        context_id = self._context_id(item)
        if context_id is None:
            return StoreOutcome("no-context", None, 0.0)
        assoc = self.assoc
        assert assoc is not None
        self._message_id = (self._message_id + 1) % 65536
        request = C_STORE()
        request.MessageID = self._message_id
        request.Priority = 2
        # Set without pynetdicom's validation: the fuzzer sends invalid UIDs on purpose.
        request._affected_sop_class_uid = UID(item.affected_sop_class or item.context_sop_class)
        request._affected_sop_instance_uid = UID(item.affected_sop_instance)
        request.DataSet = BytesIO(item.payload)
        # As in Association.send_c_store: pause the reactor, send, wait for the response.
        assoc._reactor_checkpoint.clear()
        deadline = time.monotonic() + 5
        while not assoc._is_paused:
            if not assoc.is_alive() or time.monotonic() > deadline:
                assoc._reactor_checkpoint.set()
                return StoreOutcome("aborted", None, time.monotonic() - started)
            time.sleep(0.0001)
        try:
            assoc.dimse.send_msg(request, context_id)
            _, response = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        seconds = time.monotonic() - started
        if response is None:
            # No answer: either the association ended (the peer aborted or closed it) or the
            # DIMSE timeout passed with the association still up (the peer hangs).
            timed_out = seconds >= self.timeout - 0.5
            if assoc.is_established:
                assoc.abort()
            return StoreOutcome("no-response" if timed_out else "aborted", None, seconds)
        status = getattr(response, "Status", None)
        if status is None:
            return StoreOutcome("invalid-response", None, seconds)
        return StoreOutcome(status_category(int(status)), int(status), seconds)


def rejection_left_unread(assoc: Association) -> Any:
    """The A-ASSOCIATE-RJ that pynetdicom 3.0's requestor received but did not read, or None.

    Its ACSE checks ``socket._is_connected`` after sending the request; when our rejection
    arrives fast and the requestor's thread is slow to get there (a loaded machine, or the
    node's threads in the same process holding the GIL), its DUL thread has already read the
    A-ASSOCIATE-RJ and closed the socket, and the requestor reports an abort.  The RJ then sits
    unread in the DUL's queue; this marks the association rejected, as it was."""
    if assoc.is_established or assoc.is_rejected:
        return None
    while (primitive := assoc.dul.receive_pdu(wait=False)) is not None:
        if getattr(primitive, "result", None) in (0x01, 0x02):
            assoc.is_rejected, assoc.is_aborted = True, False
            return primitive
    return None


def _no_delay(assoc: Association) -> None:
    """Disable Nagle: the command and data set PDUs otherwise wait 40 ms for a delayed ACK."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if assoc.is_established and sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def echo(host: str, port: int, timeout: float = 5.0, calling_ae: str = "FUZZER") -> float | None:
    """Seconds a C-ECHO took on a fresh association, or None when none came within ``timeout``."""
    started = time.monotonic()
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title="AINODE")
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    elapsed = time.monotonic() - started
    ok = "Status" in status and int(status.Status) == SUCCESS
    return elapsed if ok and elapsed <= timeout else None

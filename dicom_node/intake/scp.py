"""The DICOM Storage SCP: association policy and the C-ECHO / C-STORE handlers.

The C-STORE handler itself (checks, filing, statuses) lives in ``filing``; this module decides
who may associate and with what, and runs the server.

Dependencies are bound at start (``evt_handlers=[(evt.EVT_C_STORE, handle_store, [intake])]``)
rather than read from globals, so tests can drive the handler with a real dataset.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Protocol, cast

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node import tls
from dicom_node.admin.audit import AuditLog
from dicom_node.errors import DicomStatus
from dicom_node.intake import admission, pynetdicom_adapter
from dicom_node.intake.admission import AdmissionSettings, Gate, GuardedServer
from dicom_node.intake.filing import Accepted, Intake, handle_store, receive_to_files
from dicom_node.routing import accepted_sop_classes

log = logging.getLogger(__name__)

# Exactly what the routing table can analyse: nothing is accepted only to be ignored later.
STORAGE_SOP_CLASSES: tuple[UID, ...] = tuple(UID(uid) for uid in accepted_sop_classes())
NATIVE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
)
# Compressed syntaxes are stored as received and decoded at processing (pylibjpeg plugins).
COMPRESSED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
ACCEPTED_TRANSFER_SYNTAXES = NATIVE_TRANSFER_SYNTAXES + COMPRESSED_TRANSFER_SYNTAXES


def stow_accepted() -> Accepted:
    """What STOW-RS takes: the same SOP Classes and Transfer Syntaxes the SCP negotiates."""
    return Accepted(
        frozenset(str(uid) for uid in STORAGE_SOP_CLASSES),
        frozenset(str(uid) for uid in ACCEPTED_TRANSFER_SYNTAXES),
    )


def handle_echo(event: evt.Event) -> int:
    return DicomStatus.SUCCESS


def _log_association(event: evt.Event, gate: Gate) -> None:
    """EVT_ACCEPTED / EVT_REJECTED: one log line and one audit line (``admission``)."""
    if event.event == evt.EVT_ACCEPTED:
        gate.accepted(event.assoc)
    else:
        gate.rejected(event.assoc)


def _association_closed(event: evt.Event, intake: Intake) -> None:
    """EVT_RELEASED / EVT_CONN_CLOSE: tell assembly which associations ended, and how.

    A released association is reported at its release; any other close (A-ABORT, a dropped
    connection, a timeout) at the connection's close, as not released.
    """
    if intake.on_association_end is None:
        return
    key = id(event.assoc)
    if event.event == evt.EVT_RELEASED:
        pynetdicom_adapter.mark_released(event.assoc)
        intake.on_association_end(key, True)
    elif not pynetdicom_adapter.was_released(event.assoc):
        intake.on_association_end(key, False)


class ScpSettings(AdmissionSettings, Protocol):
    """What the SCP reads of the configuration (``config.Settings`` has it)."""

    @property
    def host(self) -> str: ...
    @property
    def max_pdu_bytes(self) -> int: ...
    @property
    def data_dir(self) -> Path: ...


def build_ae(settings: ScpSettings) -> AE:
    """The application entity with our presentation contexts and association policy."""
    ae = AE(ae_title=settings.ae_title)
    ae.require_called_aet = settings.require_called_ae
    if settings.allowed_aes:
        ae.require_calling_aet = list(settings.allowed_aes)
    ae.network_timeout = settings.network_timeout_seconds
    # The gate (``admission``) already bounds the wait for the A-ASSOCIATE-RQ; this is the
    # ARTIM/ACSE wait for release and abort once associated.
    ae.acse_timeout = settings.network_timeout_seconds
    ae.dimse_timeout = settings.network_timeout_seconds
    # The gate counts and refuses first (with the reservation); pynetdicom's own count is
    # kept as a backstop at the same limit.
    ae.maximum_associations = settings.maximum_associations
    ae.maximum_pdu_size = settings.max_pdu_bytes
    ae.add_supported_context(Verification)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
    return ae


def start_scp(settings: ScpSettings, intake: Intake, gate: Gate | None = None) -> GuardedServer:
    """Start listening in background threads; returns the server (``.shutdown()``).

    ``gate`` is built from the settings when not given (``Node`` builds it earlier, so a bad
    certificate or an unresolvable ``ae_hosts`` name stops the start before any thread runs).
    """
    receive_to_files()  # data sets go to a file as they arrive; ``filing`` moves it in
    if gate is None:
        audit = intake.audit if isinstance(intake.audit, AuditLog) else None
        gate = Gate.from_settings(settings, audit)
    ae = build_ae(settings)
    handlers = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [intake]),
        (evt.EVT_ACCEPTED, _log_association, [gate]),
        (evt.EVT_REJECTED, _log_association, [gate]),
        (evt.EVT_RELEASED, _association_closed, [intake]),
        (evt.EVT_CONN_CLOSE, _association_closed, [intake]),
    ]
    server = cast(
        GuardedServer,
        ae.make_server(
            (settings.host, settings.port),
            evt_handlers=handlers,  # type: ignore[arg-type]
            server_class=GuardedServer,
            request_handler=admission.PreparedHandler,
        ),
    )
    server.gate = gate
    server.receive_directory = settings.data_dir
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True)
    thread.start()
    # What ae.start_server does too: the server's shutdown() removes itself from this list.
    pynetdicom_adapter.register_server(ae, server)
    reserved = f", the last {gate.reserved} for allowed_aes" if gate.reserved else ""
    log.info(
        "DICOM SCP %s listening on %s:%d (%s): up to %d associations%s; A-ASSOCIATE-RQ within %g s",
        settings.ae_title,
        settings.host,
        settings.port,
        "TLS only" if gate.ssl_context is not None else "no TLS",
        settings.maximum_associations,
        reserved,
        settings.association_request_timeout_seconds,
    )
    log.info("%s", tls.describe(settings))
    return server

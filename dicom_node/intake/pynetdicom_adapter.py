"""Every use of pynetdicom's private API, in one place.

The intake replaces or tunes parts of pynetdicom that its public API does not reach (see
``admission`` and ``filing`` for why).  Nothing else in ``dicom_node`` touches a private name
of pynetdicom, monkeypatches one of its objects or hangs an attribute on one: it calls the
functions here.  Tested with pynetdicom ``TESTED_VERSION`` (3.0.4); ``pyproject.toml`` pins
the 3.0 series.  ``check_assumptions()`` (run by ``tests/unit/test_pynetdicom_adapter.py``)
checks that each touch point below still has the shape relied on, so an upgrade fails there,
naming the touch point, rather than somewhere in the intake tests.

The touch points (the private name, what we need it for):

1. ``pynetdicom._config.STORE_RECV_CHUNKED_DATASET`` (set to True; ``enable_chunked_receive``):
   each received data set goes to a temporary file as it arrives, so memory stays flat
   whatever the instance size.
2. ``pynetdicom.dimse_messages.create_file_meta`` (the module global replaced;
   ``tolerate_empty_meta_uids``): with chunked receive, ``DIMSEMessage.decode_msg`` writes the
   temporary file's meta with it, and raises (ending the association's thread) when the
   request's Affected SOP Class/Instance UID is empty.  The replacement substitutes a
   placeholder UID so that the C-STORE handler runs and refuses the request with a status.
3. ``Association._serve_request`` (overridden by ``InterceptingAssociation``): the acceptor's
   reactor hands each DIMSE request to it; ``filing.NodeAssociation`` answers a C-STORE request
   that lacks a required parameter (pynetdicom drops it without a response).
4. ``C_STORE._dataset_path`` (read; ``received_file``): the temporary file of such a dropped
   request, removed by the refusal.
5. ``DIMSEServiceProvider.get_msg`` (replaced on the instance; reads ``msg_queue``;
   ``wait_for_dimse_messages``): the reactor (``Association._run_reactor``) sleeps 1 ms and
   asks without waiting; the replacement waits on the queue instead (fewer wake-ups).
6. ``DULServiceProvider._run_loop_delay`` (set to 0; ``stop_dul_sleeping``) and
   ``DULServiceProvider.send_pdu`` (wrapped on the instance; ``call_after_send_pdu``): the DUL
   loop's 1 ms sleep is replaced by ``admission._PrefetchedSocket.ready`` waiting in
   ``select``, which the wrapped ``send_pdu`` wakes when the association has a PDU to send.
7. ``DULServiceProvider._kill_thread`` (read; ``dul_stopping``), with ``event_queue`` and
   ``to_provider_queue`` (``dul_busy``): that socket's ``ready`` must not wait while the DUL has
   work queued or is stopping.
8. ``RequestHandler._create_association`` (mirrored by ``build_acceptor_association``), with
   ``pynetdicom._globals.MODE_ACCEPTOR``, ``Association._server`` (set) and
   ``AssociationServer._handlers`` (read): the gate hands over a connection whose
   A-ASSOCIATE-RQ it already read, so the association is built as pynetdicom builds it but
   with our association class and socket.
9. ``AE._servers`` (appended; ``register_server``): what ``AE.start_server`` does for a server
   it starts; ``AssociationServer.shutdown`` removes the server from that list (and fails if
   it is not there).
10. An attribute of ours on the association, ``_dicom_node_released`` (``mark_released``,
    ``was_released``): the association ended by release, so its connection's close is not
    reported again as an abort.  pynetdicom must not define that name.
11. ``pynetdicom.dimse_messages.NamedTemporaryFile`` (the module global replaced;
    ``receive_into``): ``DIMSEMessage.decode_msg`` opens each received data set's temporary
    file with it, in the system temporary directory.  The replacement opens it in the directory
    set on the association whose DUL thread is decoding (``DULServiceProvider.assoc``), so a
    patient's data lives only in the node's data directory; other associations in the process
    keep pynetdicom's default.
12. ``DIMSEServiceProvider.message`` (the message being received; its ``_data_set_file``) and
    ``msg_queue`` (read; ``unfinished_files``): at the end of an association, the temporary
    file of a data set cut off by an abort or a dropped connection, and those of requests
    received but never served, are ours to remove (pynetdicom leaves them).
"""

from __future__ import annotations

import functools
import inspect
import queue
import threading
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import pynetdicom
from pydicom.uid import UID
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import (
    AssociationServer,
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

TESTED_VERSION = "3.0.4"

_MARK = "_dicom_node"  # on our replacement of create_file_meta: installed once
_RELEASED = "_dicom_node_released"  # on an association (touch point 10)
_RECEIVE_DIRECTORY = "_dicom_node_receive_directory"  # on an association (touch point 11)
RECEIVING_PREFIX = ".tmp-dimse-"  # with ".part": storage.remove_partial_files sweeps them

A = TypeVar("A", bound=Association)


# -- 1, 2: receiving to files ------------------------------------------------------------------


def enable_chunked_receive() -> None:
    """Touch point 1: received data sets are written to a temporary file as they arrive."""
    _config.STORE_RECV_CHUNKED_DATASET = True


def tolerate_empty_meta_uids(placeholder: str) -> None:
    """Touch point 2: an empty Affected SOP Class/Instance UID is written to the temporary
    file's meta as ``placeholder`` instead of ending the association's thread.  Idempotent."""
    original: Any = getattr(dimse_messages, "create_file_meta")  # noqa: B009
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)  # the signature checked by check_assumptions stays visible
    def tolerant(**kwargs: Any) -> Any:
        for key in ("sop_class_uid", "sop_instance_uid"):
            kwargs[key] = kwargs.get(key) or UID(placeholder)
        return original(**kwargs)

    setattr(tolerant, _MARK, True)
    setattr(dimse_messages, "create_file_meta", tolerant)  # noqa: B010


def receive_into(assoc: Association, directory: Path) -> None:
    """Touch point 11: ``assoc``'s received data sets are written under ``directory``."""
    _install_temporary_file()
    setattr(assoc, _RECEIVE_DIRECTORY, directory)


def _install_temporary_file() -> None:
    original: Any = getattr(dimse_messages, "NamedTemporaryFile")  # noqa: B009
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def in_receive_directory(*args: Any, **kwargs: Any) -> Any:
        assoc = getattr(threading.current_thread(), "assoc", None)
        directory = getattr(assoc, _RECEIVE_DIRECTORY, None)
        if isinstance(directory, Path):
            kwargs.update(dir=directory, prefix=RECEIVING_PREFIX, suffix=".part")
        return original(*args, **kwargs)

    setattr(in_receive_directory, _MARK, True)
    setattr(dimse_messages, "NamedTemporaryFile", in_receive_directory)  # noqa: B010


def unfinished_files(assoc: Association) -> list[Path]:
    """Touch point 12: the temporary files of data sets ``assoc`` received in part, or whole
    but never served; call once the association's threads have stopped."""
    files: list[Path] = []
    dimse = assoc.dimse
    message = getattr(dimse, "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is not None:
        partial.close()
        files.append(Path(partial.name))
    while True:
        try:
            _, primitive = dimse.msg_queue.get_nowait()
        except queue.Empty:
            break
        if isinstance(primitive, C_STORE):
            path = received_file(primitive)
            if path is not None:
                files.append(path)
    return files


# -- 3, 4, 5: the acceptor association ---------------------------------------------------------


class InterceptingAssociation(Association):
    """Touch point 3: pynetdicom's association, offering each DIMSE request it serves to
    ``intercept_request`` first."""

    def intercept_request(self, msg: Any, context_id: int) -> bool:
        """Serve ``msg`` here and return True, or return False to let pynetdicom serve it."""
        return False

    def _serve_request(self, msg: Any, context_id: int) -> None:
        if self.intercept_request(msg, context_id):
            return
        super()._serve_request(msg, context_id)

    def association_ended(self) -> None:
        """Called on the association's thread once its reactor (and its DUL) stopped."""

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            self.association_ended()


def received_file(msg: C_STORE) -> Path | None:
    """Touch point 4: the temporary file a C-STORE request's data set was received to."""
    path = getattr(msg, "_dataset_path", None)
    return path if isinstance(path, Path) else None


def wait_for_dimse_messages(assoc: Association, seconds: float) -> None:
    """Touch point 5: the association's own non-blocking ask for a DIMSE message (its reactor's)
    waits up to ``seconds`` on the message queue; other threads' asks are unchanged."""
    dimse = assoc.dimse
    ask = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if block or threading.current_thread() is not assoc:
            return ask(block)
        try:
            return dimse.msg_queue.get(timeout=seconds)
        except queue.Empty:
            return None, None

    dimse.get_msg = get_msg  # type: ignore[method-assign]


# -- 6, 7: the DUL loop ------------------------------------------------------------------------


def stop_dul_sleeping(assoc: Association) -> None:
    """Touch point 6: the DUL loop no longer sleeps between polls (the socket's ``ready``
    waits instead)."""
    assoc.dul._run_loop_delay = 0.0


def call_after_send_pdu(assoc: Association, callback: Callable[[], None]) -> None:
    """Touch point 6: ``callback`` runs after each primitive the association hands to its DUL
    (a C-STORE response, a release, an abort)."""
    dul = assoc.dul
    hand_over = dul.send_pdu

    def send_pdu(primitive: Any) -> None:
        hand_over(primitive)
        callback()

    dul.send_pdu = send_pdu  # type: ignore[method-assign]


def dul_busy(assoc: Association) -> bool:
    """Touch point 7: the DUL has events or primitives queued."""
    dul = assoc.dul
    return not dul.event_queue.empty() or not dul.to_provider_queue.empty()


def dul_stopping(assoc: Association) -> bool:
    """Touch point 7: the DUL's thread has been told to end."""
    return bool(assoc.dul._kill_thread)


# -- 8, 9: building the association and registering the server ----------------------------------


def build_acceptor_association(
    handler: RequestHandler,
    association_class: type[A],
    make_socket: Callable[[A], AssociationSocket],
) -> A:
    """Touch point 8: as pynetdicom 3.0.4's ``RequestHandler._create_association``, with our
    association class and our socket (``make_socket`` gets the new association)."""
    server = handler.server
    ae = handler.ae
    assoc = association_class(ae, MODE_ACCEPTOR)
    assoc._server = server
    assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
    assoc.set_socket(make_socket(assoc))
    assoc.acceptor.maximum_length = ae.maximum_pdu_size
    assoc.acceptor.ae_title = server.ae_title
    assoc.acceptor.address_info = handler.local
    assoc.acceptor.implementation_class_uid = ae.implementation_class_uid
    assoc.acceptor.implementation_version_name = ae.implementation_version_name
    assoc.acceptor.supported_contexts = deepcopy(server.contexts)
    assoc.requestor.address_info = handler.remote
    for event, handlers in server._handlers.items():
        if event.is_intervention and handlers:
            assoc.bind(event, *handlers)
        elif isinstance(event, evt.NotificationEvent):
            for bound, args in cast(list[tuple[Any, Any]], handlers):
                assoc.bind(event, bound, args)
    return assoc


def register_server(ae: AE, server: ThreadedAssociationServer) -> None:
    """Touch point 9: list a server started outside ``AE.start_server`` as the AE's own, as
    ``start_server`` does (its ``shutdown`` removes it again)."""
    ae._servers.append(server)


# -- 10: our mark on the association ----------------------------------------------------------


def mark_released(assoc: Association) -> None:
    """Touch point 10: remember that ``assoc`` ended by release."""
    setattr(assoc, _RELEASED, True)


def was_released(assoc: Association) -> bool:
    """Touch point 10: ``mark_released`` was called for ``assoc``."""
    return bool(getattr(assoc, _RELEASED, False))


# -- the assumptions, checked ------------------------------------------------------------------


@dataclass(frozen=True)
class Assumption:
    """What one touch point relies on; ``check`` returns None when it holds, else what changed."""

    touch_point: str
    check: Callable[[], str | None]


def _names(function: Any) -> frozenset[str]:
    """The global and attribute names a function's code uses."""
    return frozenset(inspect.unwrap(function).__code__.co_names)


def _uses(function: Any, *names: str) -> str | None:
    missing = sorted(set(names) - _names(function))
    if missing:
        return f"{function.__qualname__} no longer uses {', '.join(missing)}"
    return None


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def _first(*problems: str | None) -> str | None:
    return next((p for p in problems if p is not None), None)


def _fresh_association() -> Association:
    """An acceptor association that is never started (no thread, no socket)."""
    return Association(AE(), MODE_ACCEPTOR)


def _check_chunked_receive() -> str | None:
    value = getattr(_config, "STORE_RECV_CHUNKED_DATASET", None)
    if not isinstance(value, bool):
        return "pynetdicom._config.STORE_RECV_CHUNKED_DATASET is gone or not a bool"
    return None


def _check_create_file_meta() -> str | None:
    function = getattr(dimse_messages, "create_file_meta", None)
    if function is None:
        return "pynetdicom.dimse_messages.create_file_meta is gone"
    function = inspect.unwrap(function)  # pynetdicom's own, when ours is installed already
    wanted = {"sop_class_uid", "sop_instance_uid", "transfer_syntax"}
    keyword_only = {
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    if not wanted <= keyword_only:
        return f"create_file_meta no longer takes {sorted(wanted)} as keywords"
    decode = dimse_messages.DIMSEMessage.decode_msg
    if decode.__globals__ is not vars(dimse_messages):
        return "DIMSEMessage.decode_msg is no longer defined in pynetdicom.dimse_messages"
    return _uses(decode, "create_file_meta", "STORE_RECV_CHUNKED_DATASET")


def _check_serve_request() -> str | None:
    serve = getattr(Association, "_serve_request", None)
    if serve is None:
        return "Association._serve_request is gone"
    if _parameters(serve) != ["self", "msg", "context_id"]:
        return f"Association._serve_request{inspect.signature(serve)} changed its parameters"
    return _uses(Association._run_reactor, "_serve_request")


def _check_dataset_path() -> str | None:
    if not hasattr(C_STORE(), "_dataset_path"):
        return "C_STORE._dataset_path is gone"
    return _uses(dimse_messages.DIMSEMessage.message_to_primitive, "_dataset_path")


def _check_temporary_file() -> str | None:
    if not callable(getattr(dimse_messages, "NamedTemporaryFile", None)):
        return "pynetdicom.dimse_messages.NamedTemporaryFile is gone"
    if getattr(DULServiceProvider, "assoc", None) is None:
        return "DULServiceProvider.assoc is gone"
    return _uses(dimse_messages.DIMSEMessage.decode_msg, "NamedTemporaryFile", "_data_set_file")


def _check_unfinished_message() -> str | None:
    dimse = _fresh_association().dimse
    if not hasattr(dimse, "message") or not isinstance(dimse.msg_queue, queue.Queue):
        return "DIMSEServiceProvider.message or msg_queue is gone"
    return _first(
        _uses(DIMSEServiceProvider.receive_primitive, "message", "msg_queue"),
        _uses(Association.run_reactor, "_run_reactor"),
    )


def _check_get_msg() -> str | None:
    if _parameters(DIMSEServiceProvider.get_msg) != ["self", "block"]:
        return f"DIMSEServiceProvider.get_msg{inspect.signature(DIMSEServiceProvider.get_msg)}"
    if not isinstance(getattr(_fresh_association().dimse, "msg_queue", None), queue.Queue):
        return "DIMSEServiceProvider.msg_queue is gone or not a queue.Queue"
    return _uses(Association._run_reactor, "dimse", "get_msg")


def _check_dul_loop() -> str | None:
    dul = _fresh_association().dul
    if not isinstance(getattr(dul, "_run_loop_delay", None), float):
        return "DULServiceProvider._run_loop_delay is gone or not a float"
    if _parameters(DULServiceProvider.send_pdu) != ["self", "primitive"]:
        return f"DULServiceProvider.send_pdu{inspect.signature(DULServiceProvider.send_pdu)}"
    return _uses(DULServiceProvider.run_reactor, "_run_loop_delay", "_kill_thread")


def _check_dul_state() -> str | None:
    dul = _fresh_association().dul
    if not isinstance(getattr(dul, "_kill_thread", None), bool):
        return "DULServiceProvider._kill_thread is gone or not a bool"
    for name in ("event_queue", "to_provider_queue"):
        if not isinstance(getattr(dul, name, None), queue.Queue):
            return f"DULServiceProvider.{name} is gone or not a queue.Queue"
    return None


# What pynetdicom 3.0.4's RequestHandler._create_association uses: a change means it builds the
# association differently, and build_acceptor_association must be compared with it again.
_CREATE_ASSOCIATION_NAMES = frozenset(
    {
        "Association",
        "AssociationSocket",
        "MODE_ACCEPTOR",
        "NotificationEvent",
        "_HandlerBase",
        "_handlers",
        "_server",
        "acceptor",
        "address_info",
        "ae",
        "ae_title",
        "bind",
        "cast",
        "contexts",
        "datetime",
        "deepcopy",
        "evt",
        "implementation_class_uid",
        "implementation_version_name",
        "is_intervention",
        "isinstance",
        "local",
        "maximum_length",
        "maximum_pdu_size",
        "name",
        "now",
        "pynetdicom.association",
        "remote",
        "request",
        "requestor",
        "server",
        "set_socket",
        "strftime",
        "supported_contexts",
    }
)


def _check_create_association() -> str | None:
    create = getattr(RequestHandler, "_create_association", None)
    if create is None:
        return "RequestHandler._create_association is gone"
    names = _names(create)
    if names != _CREATE_ASSOCIATION_NAMES:
        added = sorted(names - _CREATE_ASSOCIATION_NAMES)
        removed = sorted(_CREATE_ASSOCIATION_NAMES - names)
        return (
            "RequestHandler._create_association changed (now also uses "
            f"{added}, no longer {removed}): compare build_acceptor_association with it"
        )
    if MODE_ACCEPTOR != "acceptor":
        return f"pynetdicom._globals.MODE_ACCEPTOR is {MODE_ACCEPTOR!r}"
    if "_server" not in vars(_fresh_association()):
        return "Association._server is gone"
    if "client_socket" not in _parameters(AssociationSocket):
        return "AssociationSocket() no longer takes client_socket"
    return _uses(AssociationServer.__init__, "_handlers")


def _check_servers() -> str | None:
    if not isinstance(getattr(AE(), "_servers", None), list):
        return "AE._servers is gone or not a list"
    return _first(
        _uses(AE.start_server, "_servers"),
        _uses(AssociationServer.shutdown, "ae", "_servers", "remove"),
    )


def _check_released_mark() -> str | None:
    if hasattr(_fresh_association(), _RELEASED):
        return f"pynetdicom's Association now has an attribute {_RELEASED}"
    return None


ASSUMPTIONS: tuple[Assumption, ...] = (
    Assumption("1 _config.STORE_RECV_CHUNKED_DATASET", _check_chunked_receive),
    Assumption("2 dimse_messages.create_file_meta", _check_create_file_meta),
    Assumption("3 Association._serve_request", _check_serve_request),
    Assumption("4 C_STORE._dataset_path", _check_dataset_path),
    Assumption("5 DIMSEServiceProvider.get_msg", _check_get_msg),
    Assumption("6 DULServiceProvider._run_loop_delay, send_pdu", _check_dul_loop),
    Assumption("7 DULServiceProvider._kill_thread, queues", _check_dul_state),
    Assumption("8 RequestHandler._create_association", _check_create_association),
    Assumption("9 AE._servers", _check_servers),
    Assumption("10 Association._dicom_node_released", _check_released_mark),
    Assumption("11 dimse_messages.NamedTemporaryFile", _check_temporary_file),
    Assumption("12 DIMSEServiceProvider.message, msg_queue", _check_unfinished_message),
)


def check_assumptions() -> list[str]:
    """What no longer holds, one line per touch point (empty: all hold)."""
    problems = []
    for assumption in ASSUMPTIONS:
        try:
            problem = assumption.check()
        except Exception as exc:  # a check that cannot even run has found a change
            problem = f"the check failed: {type(exc).__name__}: {exc}"
        if problem is not None:
            problems.append(
                f"pynetdicom {pynetdicom.__version__} (tested: {TESTED_VERSION}), "
                f"touch point {assumption.touch_point}: {problem}"
            )
    return problems

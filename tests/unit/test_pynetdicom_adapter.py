"""pynetdicom's private API as ``intake.pynetdicom_adapter`` relies on it.

A pynetdicom upgrade that moves one of these fails here, naming the touch point listed in the
adapter's docstring, rather than as a hang or a lost instance somewhere in the intake tests.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pynetdicom
import pytest
from pydicom.uid import UID
from pynetdicom import AE, dimse_messages
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from dicom_node.intake import pynetdicom_adapter
from dicom_node.intake.pynetdicom_adapter import ASSUMPTIONS, TESTED_VERSION, Assumption

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "dicom_node"
ADAPTER = PACKAGE / "intake" / "pynetdicom_adapter.py"


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def test_installed_pynetdicom_is_the_tested_minor_version() -> None:
    assert _minor(pynetdicom.__version__) == _minor(TESTED_VERSION), (
        f"pynetdicom {pynetdicom.__version__} is installed, the adapter was checked against "
        f"{TESTED_VERSION}: read intake/pynetdicom_adapter.py's touch points against the new "
        "version, then update TESTED_VERSION and the pin in pyproject.toml"
    )


def test_pyproject_pins_pynetdicom_to_the_tested_minor_version() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [requirement] = [d for d in dependencies if re.match(r"pynetdicom\b", d)]
    major, minor = _minor(TESTED_VERSION)
    assert f">={TESTED_VERSION}" in requirement, requirement
    assert f"<{major}.{minor + 1}" in requirement, requirement


@pytest.mark.parametrize("assumption", ASSUMPTIONS, ids=lambda a: a.touch_point)
def test_touch_point_still_holds(assumption: Assumption) -> None:
    problem = assumption.check()
    assert problem is None, (
        f"pynetdicom {pynetdicom.__version__} (adapter tested with {TESTED_VERSION}), "
        f"touch point {assumption.touch_point}: {problem}"
    )


def test_every_touch_point_in_the_docstring_is_checked() -> None:
    doc = pynetdicom_adapter.__doc__ or ""
    listed = {int(n) for n in re.findall(r"^\s*(\d+)\. ", doc, flags=re.MULTILINE)}
    checked = {int(a.touch_point.split()[0]) for a in ASSUMPTIONS}
    assert listed == checked == set(range(1, len(ASSUMPTIONS) + 1))


def test_check_assumptions_reports_nothing() -> None:
    assert pynetdicom_adapter.check_assumptions() == []


def test_check_assumptions_names_the_touch_point_that_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(Association, "_serve_request")
    [problem] = pynetdicom_adapter.check_assumptions()
    assert "touch point 3 Association._serve_request" in problem
    assert f"tested: {TESTED_VERSION}" in problem


# Private names of pynetdicom the adapter uses; no other module of ours may use them.
PRIVATE_ATTRIBUTES = frozenset(
    {
        "_serve_request",
        "_dataset_path",
        "_run_loop_delay",
        "_kill_thread",
        "_create_association",
        "_server",
        "_servers",
        "_handlers",
        "_dicom_node_released",
    }
)


def _private_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pynetdicom"):
            names = [node.module or ""] + [alias.name for alias in node.names]
            if any(part.startswith("_") for name in names for part in name.split(".")):
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pynetdicom") and "._" in alias.name:
                    found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.FunctionDef) and node.name in PRIVATE_ATTRIBUTES:
            found.append(f"line {node.lineno}: def {node.name}")
    return found


def test_no_other_module_touches_pynetdicom_private_api() -> None:
    offenders = {
        str(path.relative_to(ROOT)): uses
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != ADAPTER and (uses := _private_uses(path))
    }
    assert offenders == {}, "move these into dicom_node/intake/pynetdicom_adapter.py"


def test_empty_uids_in_the_file_meta_become_the_placeholder() -> None:
    pynetdicom_adapter.tolerate_empty_meta_uids("0.0")
    pynetdicom_adapter.tolerate_empty_meta_uids("0.0")  # idempotent: wrapped once
    create = getattr(dimse_messages, "create_file_meta")  # noqa: B009
    meta = create(
        sop_class_uid=UID(""), sop_instance_uid=UID(""), transfer_syntax=UID("1.2.840.10008.1.2")
    )
    assert meta.MediaStorageSOPClassUID == meta.MediaStorageSOPInstanceUID == "0.0"
    meta = create(
        sop_class_uid=UID("1.2.3"),
        sop_instance_uid=UID("4.5"),
        transfer_syntax=UID("1.2.840.10008.1.2"),
    )
    assert (meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID) == ("1.2.3", "4.5")


def test_received_file_is_the_temporary_path_only() -> None:
    request = C_STORE()
    assert pynetdicom_adapter.received_file(request) is None
    request._dataset_path = (Path("/tmp/x.dcm"), 0)  # what a sending primitive holds
    assert pynetdicom_adapter.received_file(request) is None
    request._dataset_path = Path("/tmp/x.dcm")
    assert pynetdicom_adapter.received_file(request) == Path("/tmp/x.dcm")


def test_released_mark() -> None:
    assoc = Association(AE(), "acceptor")
    assert not pynetdicom_adapter.was_released(assoc)
    pynetdicom_adapter.mark_released(assoc)
    assert pynetdicom_adapter.was_released(assoc)


def test_dul_hooks_on_an_unstarted_association() -> None:
    assoc = Association(AE(), "acceptor")
    assert not pynetdicom_adapter.dul_busy(assoc)
    assert not pynetdicom_adapter.dul_stopping(assoc)
    pynetdicom_adapter.stop_dul_sleeping(assoc)
    assert assoc.dul._run_loop_delay == 0.0
    sent: list[object] = []
    calls: list[int] = []
    assoc.dul.send_pdu = sent.append  # type: ignore[method-assign, assignment]
    pynetdicom_adapter.call_after_send_pdu(assoc, lambda: calls.append(len(sent)))
    assoc.dul.send_pdu("primitive")  # type: ignore[arg-type]
    assert sent == ["primitive"] and calls == [1]  # handed over first, then the callback


def test_dimse_wait_leaves_other_threads_asks_alone() -> None:
    assoc = Association(AE(), "acceptor")
    pynetdicom_adapter.wait_for_dimse_messages(assoc, 0.01)
    assert assoc.dimse.get_msg() == (None, None)  # this thread is not the association's
    message = C_STORE()
    assoc.dimse.msg_queue.put((1, message))
    assert assoc.dimse.get_msg() == (1, message)

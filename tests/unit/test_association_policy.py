"""The DICOM port's front door on real loopback associations: idle-socket floods, the
association limit and its reservation, AE + host binding, refusals as A-ASSOCIATE-RJ, and
the audit lines they leave (TLS itself is tested with certificates in tests/integration)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.config import Settings
from dicom_node.errors import ConfigError
from dicom_node.intake.admission import Gate
from tests.support.dicom_client import rejection_left_unread
from tests.support.factories import small_cr
from tests.support.gate import (
    Node,
    Outcome,
    associate,
    audited_scp,
    closed_by_peer,
    drip,
    echo_within,
    idle_sockets,
    start_audited_scp,
)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    yield from start_audited_scp(tmp_path)


def test_echo_gets_through_an_idle_socket_flood(tmp_path: Path) -> None:
    # 20 silent sockets plus 5 that drip an A-ASSOCIATE-RQ header one byte a second:
    # pynetdicom alone would give all 16 slots to them and refuse everyone else.
    with audited_scp(tmp_path, association_request_timeout_seconds=3) as node:
        flood = idle_sockets(node, 20)
        drips = idle_sockets(node, 5)
        stop = threading.Event()
        dripper = threading.Thread(target=drip, args=(drips, stop), daemon=True)
        dripper.start()
        try:
            time.sleep(0.3)
            echo_within(node, 3.0)
            echo_within(node, 3.0)
            # The deadline covers the whole request: dripping does not extend it.
            started = time.monotonic()
            for sock in flood + drips:
                assert closed_by_peer(sock, 5.0)
            assert time.monotonic() - started < 4.5
        finally:
            stop.set()
            for sock in flood + drips:
                sock.close()
        echo_within(node, 3.0)
        refused = [e for e in node.audit_lines() if e.get("outcome") == "refused"]
        reasons = {e["reason"] for e in refused}
        assert "no complete A-ASSOCIATE-RQ within 3 s" in reasons
        assert any(r.startswith("dropped for a newer connection") for r in reasons)
        assert all(e["peer"].startswith("127.0.0.1:") and e["tls"] is False for e in refused)


def test_sixteen_associations_plus_one_is_refused_cleanly_and_none_loses_an_instance(
    node: Node,
) -> None:
    datasets = [small_cr() for _ in range(16)]
    sessions = [associate(node, "MODALITY", datasets[0].SOPClassUID) for _ in range(16)]
    try:
        assert all(s.assoc.is_established for s in sessions)
        extra = associate(node, "MODALITY")
        assert extra.assoc.is_rejected
        assert extra.reject == (0x02, 0x03, 0x02)  # transient, local limit exceeded
        statuses: list[int] = []
        lock = threading.Lock()

        def store(session: Outcome, dataset: Dataset) -> None:
            status = int(session.assoc.send_c_store(dataset).Status)
            with lock:
                statuses.append(status)

        threads = [
            threading.Thread(target=store, args=(s, d))
            for s, d in zip(sessions, datasets, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert statuses == [0] * 16
    finally:
        for session in sessions:
            if session.assoc.is_established:
                session.assoc.release()
    # The slots come back once they are released.
    echo_within(node, 3.0)
    lines = node.wait_audit(ended=17)
    audited = {uid for e in lines if e["event"] == "instances" for uid in e["sop_instance_uids"]}
    assert audited == {str(d.SOPInstanceUID) for d in datasets}
    refused = [e for e in lines if e.get("outcome") == "refused"]
    assert [e["reason"] for e in refused] == ["all 16 association slots are in use"]


def test_reserved_slots_are_kept_for_allowed_aes(tmp_path: Path) -> None:
    # Permissive node (no allowed_aes): no reservation, all 4 slots for anyone.
    with audited_scp(
        tmp_path / "open", allowed_aes=(), maximum_associations=4, reserved_associations=2
    ) as node:
        held = [associate(node, f"ANY{i}") for i in range(4)]
        assert all(h.assoc.is_established for h in held)
        assert associate(node, "ANY9").reject == (0x02, 0x03, 0x02)
        for h in held:
            h.assoc.release()
    # With allowed_aes, the 2 reserved slots only go to connections that named an allowed
    # AE; unidentified connections cannot hold them (at most 2 wait at once).
    with audited_scp(tmp_path / "strict", maximum_associations=4, reserved_associations=2) as node:
        flood = idle_sockets(node, 6)
        held = [associate(node, "MODALITY") for _ in range(4)]
        assert all(h.assoc.is_established for h in held)
        for h in held:
            h.assoc.release()
        for sock in flood:
            sock.close()


def test_calling_ae_not_allowed_is_refused_with_reason(node: Node) -> None:
    outcome = associate(node, "STRANGER")
    assert outcome.assoc.is_rejected
    assert outcome.reject == (0x01, 0x01, 0x03)  # permanent, calling AE not recognised
    [line] = [e for e in node.audit_lines() if e["event"] == "association"]
    assert line["outcome"] == "refused"
    assert line["calling_ae"] == "STRANGER"
    assert line["reason"] == "calling AE 'STRANGER' is not in allowed_aes"


def test_called_ae_mismatch_is_refused(node: Node) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.settings.port, ae_title="SOMEONE")
    rejection_left_unread(assoc)
    assert assoc.is_rejected


def test_ae_bound_to_another_host_is_refused(tmp_path: Path) -> None:
    hosts = {"MODALITY": "192.0.2.10", "OTHER": "localhost"}
    with audited_scp(tmp_path, ae_hosts=hosts) as node:
        outcome = associate(node, "MODALITY")
        assert outcome.assoc.is_rejected
        assert outcome.reject == (0x01, 0x01, 0x03)
        echo = associate(node, "OTHER")  # bound to localhost: 127.0.0.1 matches
        assert echo.assoc.is_established
        echo.assoc.release()
        [refused] = [e for e in node.audit_lines() if e.get("outcome") == "refused"]
        assert refused["reason"] == (
            "calling AE MODALITY is bound by ae_hosts to 192.0.2.10 (192.0.2.10)"
        )


def test_unresolvable_ae_host_stops_the_start(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, ae_hosts={"MODALITY": "no-such-host.invalid"})
    with pytest.raises(ConfigError, match=r"ae_hosts .*no-such-host\.invalid"):
        Gate.from_settings(settings)


def test_audit_lines_for_an_association_with_instances(node: Node) -> None:
    first, second = small_cr(), small_cr()
    outcome = associate(node, "MODALITY", first.SOPClassUID)
    assert outcome.assoc.is_established
    assert int(outcome.assoc.send_c_store(first).Status) == 0
    assert int(outcome.assoc.send_c_store(second).Status) == 0
    outcome.assoc.release()
    accepted, *instances, end = node.wait_audit(ended=1)
    assert accepted["event"] == "association" and accepted["outcome"] == "accepted"
    assert accepted["calling_ae"] == "MODALITY" and accepted["called_ae"] == "AINODE"
    assert accepted["tls"] is False
    by_study: dict[str, list[str]] = {}
    for line in instances:
        assert line["event"] == "instances" and line["association"] == accepted["association"]
        by_study.setdefault(line["study_uid"], []).extend(line["sop_instance_uids"])
        assert line["statuses"] == {"0x0000": line["stored"]}
    expected: dict[str, list[str]] = {}
    for dataset in (first, second):
        expected.setdefault(str(dataset.StudyInstanceUID), []).append(str(dataset.SOPInstanceUID))
    assert by_study == expected
    assert end["event"] == "association_end" and end["outcome"] == "released"
    assert end["instances"] == 2
    # Only UIDs, AE titles, hosts and counts: no data-set values.
    text = node.audit.path.read_text()
    assert str(first.PatientName) not in text and str(first.PatientID) not in text


def test_probe_and_garbage_connections_are_dropped_and_audited(node: Node) -> None:
    with socket.create_connection(("127.0.0.1", node.settings.port), timeout=5):
        pass
    with socket.create_connection(("127.0.0.1", node.settings.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert closed_by_peer(sock, 5.0)
    echo_within(node, 3.0)
    reasons = [e["reason"] for e in node.audit_lines() if e.get("outcome") == "refused"]
    # Each connection has its own thread: the two lines may come in either order.
    assert sorted(reasons) == [
        "closed the connection without a request",
        "not a DICOM association request (PDU type 0x47)",
    ]

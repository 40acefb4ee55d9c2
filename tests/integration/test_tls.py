"""DICOM TLS with real peers: certificates made by ``openssl``, Orthanc 1.10 with DICOM TLS
both ways, DCMTK ``echoscu``/``storescu`` as third-party clients, and the refusals (a client
certificate from another CA, none at all, plain DICOM on the TLS port)."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.config import PacsAddress, Settings
from dicom_node.delivery.cstore_client import StoreClient
from dicom_node.errors import ConfigError
from dicom_node.intake.admission import Gate
from dicom_node.tls import client_context
from tests.support.factories import small_cr
from tests.support.gate import Node, associate, audited_scp, closed_by_peer, echo_within
from tests.support.orthanc import OrthancTls
from tests.support.pki import Identity, Pki, make_pki
from tests.support.stack import SC_STORAGE, SR_STORAGE

RG1 = Path(get_testdata_file("RG1_UNCR.dcm") or "")
CLIENT_AES = ("ECHOSCU", "STORESCU", "MODALITY")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_settings(pki: Pki, **extra: Any) -> dict[str, Any]:
    return {"tls_cert": pki.node.cert, "tls_key": pki.node.key, "tls_ca": pki.ca, **extra}


@pytest.fixture
def tls_node(tmp_path: Path, pki: Pki) -> Iterator[Node]:
    with audited_scp(tmp_path, **tls_settings(pki, allowed_aes=CLIENT_AES)) as node:
        yield node


def client_tls(pki: Pki, identity: str = "client") -> ssl.SSLContext:
    """A pynetdicom client context as a modality would have (its own cert, our CA)."""
    who = getattr(pki, identity)
    settings = Settings(tls_cert=who.cert, tls_key=who.key, tls_ca=pki.ca)
    return client_context(settings)


def dcmtk(
    tool: str, node: Node, *args: str, tls: Identity | None = None, ca: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``echoscu``/``storescu`` against the node, with ``+tls key cert +cf ca`` when given."""
    tls_args = ["+tls", str(tls.key), str(tls.cert), "+cf", str(ca)] if tls else []
    aet = "ECHOSCU" if tool == "echoscu" else "STORESCU"
    return subprocess.run(
        [tool, *tls_args, "-aet", aet, "-aec", "AINODE", "-to", "10", "-ta", "10",
         "127.0.0.1", str(node.settings.port), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def refusals(node: Node) -> list[str]:
    return [e["reason"] for e in node.audit_lines() if e.get("outcome") == "refused"]


def test_dcmtk_echoscu_and_storescu_over_tls_are_accepted_and_audited(
    tls_node: Node, pki: Pki, tmp_path: Path
) -> None:
    echo = dcmtk("echoscu", tls_node, tls=pki.client, ca=pki.ca)
    assert echo.returncode == 0, echo.stderr
    dataset = small_cr()
    path = tmp_path / "cr.dcm"
    dataset.save_as(path, enforce_file_format=True)
    store = dcmtk("storescu", tls_node, str(path), tls=pki.client, ca=pki.ca)
    assert store.returncode == 0, store.stderr
    lines = tls_node.wait_audit(ended=2)
    accepted = [e for e in lines if e.get("outcome") == "accepted"]
    assert [e["calling_ae"] for e in accepted] == ["ECHOSCU", "STORESCU"]
    for line in accepted:
        assert line["tls"] is True and line["tls_version"] in {"TLSv1.2", "TLSv1.3"}
        assert line["client_certificate"] == "O=Test Hospital,CN=storescu"
    [instances] = [e for e in lines if e["event"] == "instances"]
    assert instances["sop_instance_uids"] == [str(dataset.SOPInstanceUID)]
    assert instances["study_uid"] == str(dataset.StudyInstanceUID)


def test_client_certificate_from_another_ca_is_refused(tls_node: Node, pki: Pki) -> None:
    echo = dcmtk("echoscu", tls_node, tls=pki.rogue, ca=pki.ca)
    assert echo.returncode != 0
    outcome = associate(tls_node, "MODALITY", tls=client_tls(pki, "rogue"))
    assert not outcome.assoc.is_established
    echo_within(tls_node, 5.0, tls=client_tls(pki))  # the port still serves good clients
    reasons = refusals(tls_node)
    assert reasons[:2] == ["TLS handshake failed: unable to get local issuer certificate"] * 2


def test_client_without_certificate_is_refused(tls_node: Node, pki: Pki) -> None:
    anonymous = ssl.create_default_context(cafile=str(pki.ca))  # trusts us, has no certificate
    outcome = associate(tls_node, "MODALITY", tls=anonymous)
    assert not outcome.assoc.is_established
    deadline = time.monotonic() + 5
    while not refusals(tls_node) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refusals(tls_node) == ["TLS handshake failed: the peer sent no client certificate"]


def test_plain_association_to_the_tls_port_fails(tls_node: Node, pki: Pki) -> None:
    plain = dcmtk("echoscu", tls_node)
    assert plain.returncode != 0
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    ae.acse_timeout = 5
    assoc = ae.associate("127.0.0.1", tls_node.settings.port, ae_title="AINODE")
    assert not assoc.is_established
    reasons = refusals(tls_node)
    assert set(reasons) == {
        "TLS handshake failed: the peer did not start TLS (plain DICOM on the TLS port?)"
    }
    assert len(reasons) == 2


def test_optional_client_certificates(tmp_path: Path, pki: Pki) -> None:
    settings = tls_settings(pki, tls_require_client_cert=False, allowed_aes=CLIENT_AES)
    with audited_scp(tmp_path, **settings) as node:
        anonymous = ssl.create_default_context(cafile=str(pki.ca))
        echo_within(node, 5.0, tls=anonymous)
        # A certificate that is sent is still verified.
        assert not associate(node, "MODALITY", tls=client_tls(pki, "rogue")).assoc.is_established


def test_silent_tls_clients_do_not_stall_the_port(tmp_path: Path, pki: Pki) -> None:
    # pynetdicom does the handshake on the accepting thread: one silent client used to stall
    # every TLS association; now each waits on its own thread under the request deadline.
    settings = tls_settings(pki, allowed_aes=CLIENT_AES, association_request_timeout_seconds=3)
    with audited_scp(tmp_path, **settings) as node:
        flood = [socket.create_connection(("127.0.0.1", node.settings.port)) for _ in range(20)]
        try:
            time.sleep(0.2)
            assert echo_within(node, 3.0, tls=client_tls(pki)) < 3.0
            assert all(closed_by_peer(sock, 5.0) for sock in flood)
        finally:
            for sock in flood:
                sock.close()


def test_store_client_verifies_the_server_name(tls_node: Node, pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "cr.dcm"
    small_cr().save_as(path, enforce_file_format=True)
    address = PacsAddress("AINODE", "127.0.0.1", tls_node.settings.port)
    [ok] = StoreClient("MODALITY", 10, client_tls(pki)).send(address, [path])
    assert ok.delivered, ok.error
    # A server certificate for another host name is refused by the client.
    with audited_scp(
        tmp_path / "elsewhere",
        tls_cert=pki.wrong_host.cert,
        tls_key=pki.wrong_host.key,
        tls_ca=pki.ca,
        allowed_aes=CLIENT_AES,
    ) as elsewhere:
        address = PacsAddress("AINODE", "127.0.0.1", elsewhere.settings.port)
        [failed] = StoreClient("MODALITY", 10, client_tls(pki)).send(address, [path])
        assert not failed.delivered


def test_bad_tls_files_stop_the_start_with_the_setting_named(pki: Pki, tmp_path: Path) -> None:
    def gate(**values: Any) -> None:
        Gate.from_settings(Settings(data_dir=tmp_path, **values))

    with pytest.raises(ConfigError, match=r"^tls_key .*cannot use .*matching PEM private key"):
        gate(tls_cert=pki.node.cert, tls_key=pki.orthanc.key, tls_ca=pki.ca)
    with pytest.raises(ConfigError, match=r"^tls_key .*is encrypted"):
        gate(tls_cert=pki.node.cert, tls_key=pki.encrypted_key, tls_ca=pki.ca)
    with pytest.raises(ConfigError, match=r"^tls_cert .*not a PEM certificate"):
        gate(tls_cert=pki.node.key, tls_key=pki.node.key, tls_ca=pki.ca)
    with pytest.raises(ConfigError, match=r"^tls_ca .*needed to verify client certificates"):
        gate(tls_cert=pki.node.cert, tls_key=pki.node.key)
    with pytest.raises(ConfigError, match=r"^tls_ca .*no usable PEM certificate"):
        gate(tls_cert=pki.node.cert, tls_key=pki.node.key, tls_ca=pki.node.key)


def test_orthanc_and_the_node_exchange_a_study_over_tls_both_ways(
    make_stack: Any, pki: Pki
) -> None:
    stack = make_stack(
        start_orthanc=False,
        start_node=False,
        tls_cert=pki.node.cert,
        tls_key=pki.node.key,
        tls_ca=pki.ca,
        pacs_tls="true",
    )
    stack.orthanc.tls = OrthancTls(pki.orthanc.cert, pki.orthanc.key, pki.ca)
    stack.orthanc.start()
    stack.node.start()

    source = pydicom.dcmread(RG1, stop_before_pixels=True)
    study_uid = str(source.StudyInstanceUID)
    stack.orthanc.upload(RG1.read_bytes())  # Orthanc's routing script sends it over TLS
    found = stack.wait_results(study_uid, {SR_STORAGE, SC_STORAGE})
    results = {str(ds.SOPInstanceUID) for datasets in found.values() for ds in datasets}

    # Orthanc's port speaks TLS only: results can only have come over TLS.
    plain = AE(ae_title="AINODE")
    plain.add_requested_context(Verification)
    plain.acse_timeout = 5
    assert not plain.associate(
        "127.0.0.1", stack.orthanc.dicom_port, ae_title="ORTHANC"
    ).is_established
    echo = stack.cli("echo", "--to", f"ORTHANC@127.0.0.1:{stack.orthanc.dicom_port}")
    assert echo.returncode == 0, echo.stderr  # pacs_tls: the CLI uses TLS too
    assert stack.cli("echo", "--aet", "ECHOSCU").returncode == 0  # and to the node itself

    audit_file = stack.node.data_dir / "audit.jsonl"
    lines = [json.loads(line) for line in audit_file.read_text().splitlines()]
    [forwarded] = [
        e for e in lines if e.get("outcome") == "accepted" and e["calling_ae"] == "ORTHANC"
    ]
    assert forwarded["tls"] is True
    assert forwarded["client_certificate"] == "O=Test Hospital,CN=orthanc"
    [instances] = [e for e in lines if e["event"] == "instances"]
    assert instances["sop_instance_uids"] == [str(source.SOPInstanceUID)]
    deliveries = [e for e in lines if e["event"] == "delivery"]
    assert {e["outcome"] for e in deliveries} == {"sent"}
    assert all(e["tls"] is True and e["study_uid"] == study_uid for e in deliveries)
    assert {uid for e in deliveries for uid in e["sop_instance_uids"]} == results
    log = stack.node_log()
    assert "DICOM TLS on (TLS 1.2+" in log and "client certificates required" in log

"""Run the Debian ``Orthanc`` binary on loopback with the repository's config and Lua script.

The repository's ``orthanc/orthanc.json`` is the reference (also used by docker-compose);
``OrthancServer`` copies it with local paths, free ports and the node's address.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom import Dataset

from tests.support.net import wait_for_http

REPO_ROOT = Path(__file__).resolve().parents[2]
ORTHANC_DIR = REPO_ROOT / "orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass(frozen=True)
class OrthancTls:
    """DICOM TLS for Orthanc (1.9+): its port speaks TLS only and it sends to the node over
    TLS (``UseDicomTls`` on the node's ``DicomModalities`` entry)."""

    certificate: Path
    private_key: Path
    trusted: Path  # CA certificates Orthanc accepts peers from (the node's issuer)
    remote_certificate_required: bool = True


@dataclass(frozen=True)
class NodeTarget:
    """Where Orthanc sends studies: the node's AE title, host and port."""

    ae_title: str
    host: str
    port: int


class OrthancServer:
    def __init__(
        self,
        workdir: Path,
        http_port: int,
        dicom_port: int,
        node: NodeTarget,
        ae_title: str = "ORTHANC",
        stable_age: int = 1,
        routing: bool = True,
        tls: OrthancTls | None = None,
        dicomweb_servers: dict[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.http_port = http_port
        self.dicom_port = dicom_port
        self.node = node
        self.ae_title = ae_title
        self.stable_age = stable_age
        self.routing = routing
        self.tls = tls
        # DICOMweb servers Orthanc can STOW to (``DicomWeb.Servers``): name -> root URL.
        self.dicomweb_servers = dicomweb_servers or {}
        self.url = f"http://127.0.0.1:{http_port}"
        self.log_path = self.workdir / "orthanc.log"
        self._process: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = json.loads((ORTHANC_DIR / "orthanc.json").read_text())
        storage = self.workdir / "storage"
        config.update(
            {
                "StorageDirectory": str(storage),
                "IndexDirectory": str(storage),
                "HttpPort": self.http_port,
                "DicomPort": self.dicom_port,
                "DicomAet": self.ae_title,
                "RemoteAccessAllowed": False,
                "StableAge": self.stable_age,
                "LuaScripts": [str(ORTHANC_DIR / "route_to_node.lua")] if self.routing else [],
                "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
            }
        )
        if self.dicomweb_servers:
            config["DicomWeb"]["Servers"] = {
                name: [url.rstrip("/") + "/"] for name, url in self.dicomweb_servers.items()
            }
        node = config["DicomModalities"]["ainode"]
        node.update({"AET": self.node.ae_title, "Host": self.node.host, "Port": self.node.port})
        if self.tls is not None:
            config.update(
                {
                    "DicomTlsEnabled": True,
                    "DicomTlsCertificate": str(self.tls.certificate),
                    "DicomTlsPrivateKey": str(self.tls.private_key),
                    "DicomTlsTrustedCertificates": str(self.tls.trusted),
                    "DicomTlsRemoteCertificateRequired": self.tls.remote_certificate_required,
                }
            )
            node["UseDicomTls"] = True
        return config

    def start(self, timeout: float = 30.0) -> None:
        binary = shutil.which("Orthanc")
        if binary is None:
            raise RuntimeError("Orthanc is not installed (apt-get install orthanc)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        try:
            wait_for_http(f"{self.url}/system", timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"Orthanc did not start; see {self.log_path}") from None

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> OrthancServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- REST -----------------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        req = urllib.request.Request(f"{self.url}{path}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=60) as response:
            payload = response.read()
        if response.headers.get_content_type() == "application/json":
            return json.loads(payload)
        return payload

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, data: bytes) -> dict[str, Any]:
        """``POST /instances``: store one DICOM file as if it came from a modality."""
        result: dict[str, Any] = self.request("POST", "/instances", data)
        return result

    def study_id(self, study_instance_uid: str) -> str | None:
        matches = self.request("POST", "/tools/lookup", study_instance_uid.encode())
        for match in matches:
            if match["Type"] == "Study":
                return str(match["ID"])
        return None

    def study_instances(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Every instance of the study with its series' modality/description and tags."""
        study_id = self.study_id(study_instance_uid)
        if study_id is None:
            return []
        found = []
        for series in self.get(f"/studies/{study_id}/series"):
            for instance_id in series["Instances"]:
                found.append(
                    {
                        "id": instance_id,
                        "series": series["MainDicomTags"],
                        "remote_aet": self._metadata(instance_id, "RemoteAET"),
                        "origin": self._metadata(instance_id, "Origin"),
                    }
                )
        return found

    def _metadata(self, instance_id: str, name: str) -> str:
        """An instance's metadata item; '' when Orthanc has none (RemoteAET after REST/STOW)."""
        try:
            return str(self.get(f"/instances/{instance_id}/metadata/{name}").decode())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return ""
            raise

    def instance_file(self, instance_id: str) -> bytes:
        data: bytes = self.get(f"/instances/{instance_id}/file")
        return data

    def results_from(
        self, study_instance_uid: str, sender_ae: str, sop_classes: set[str]
    ) -> dict[str, list[Dataset]]:
        """Instances of the study that ``sender_ae`` stored, by SOP Class UID (``sender_ae``
        "" means stored over HTTP: REST or STOW-RS)."""
        found: dict[str, list[Dataset]] = {}
        for item in self.study_instances(study_instance_uid):
            if item["remote_aet"] != sender_ae:
                continue
            dataset = pydicom.dcmread(io.BytesIO(self.instance_file(item["id"])))
            if dataset.SOPClassUID in sop_classes:
                found.setdefault(str(dataset.SOPClassUID), []).append(dataset)
        return found

    def wait_results(
        self, study_instance_uid: str, sender_ae: str, sop_classes: set[str], timeout: float
    ) -> dict[str, list[Dataset]]:
        """Poll until every SOP class in ``sop_classes`` arrived from ``sender_ae``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running:
                found = self.results_from(study_instance_uid, sender_ae, sop_classes)
                if set(found) == sop_classes:
                    return found
            time.sleep(0.2)
        raise TimeoutError(f"results from {sender_ae} did not reach Orthanc in {timeout:.0f} s")

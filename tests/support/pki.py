"""Test certificates made with the ``openssl`` command: a hospital CA with the node's,
Orthanc's and a DCMTK client's certificates, and a rogue CA with a client certificate of its
own.  EC P-256 keys (fast to make; every peer here supports them), valid for two days."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the hospital CA certificate (trusted by everyone)
    node: Identity  # SAN IP:127.0.0.1, DNS:localhost; server and client use
    orthanc: Identity  # same SANs
    client: Identity  # a DCMTK / pynetdicom client signed by the hospital CA
    rogue: Identity  # a client signed by another CA
    wrong_host: Identity  # signed by the hospital CA for another host name only
    encrypted_key: Path  # the node's key, passphrase-protected


def _openssl(*args: str | Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("openssl is not installed (apt-get install openssl)")
    subprocess.run([binary, *map(str, args)], check=True, capture_output=True, timeout=60)


def _key(path: Path) -> Path:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    return path


def _ca(directory: Path, name: str) -> Identity:
    key = _key(directory / f"{name}.key")
    cert = directory / f"{name}.pem"
    _openssl(
        "req", "-x509", "-new", "-key", key, "-out", cert, "-days", "2", "-subj",
        f"/O=Test Hospital/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return Identity(cert, key)


def _leaf(directory: Path, name: str, ca: Identity, extensions: str) -> Identity:
    key = _key(directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    cert = directory / f"{name}.pem"
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/O=Test Hospital/CN={name}")
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext,
    )  # fmt: skip
    return Identity(cert, key)


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    hospital = _ca(directory, "hospital-ca")
    other = _ca(directory, "rogue-ca")
    peer = (
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    client = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
    node = _leaf(directory, "ainode", hospital, peer)
    encrypted = directory / "ainode-encrypted.key"
    _openssl(
        "pkey", "-in", node.key, "-aes256", "-passout", "pass:secret", "-out", encrypted
    )  # fmt: skip
    return Pki(
        ca=hospital.cert,
        node=node,
        orthanc=_leaf(directory, "orthanc", hospital, peer),
        client=_leaf(directory, "storescu", hospital, client),
        rogue=_leaf(directory, "rogue-client", other, client),
        wrong_host=_leaf(
            directory,
            "elsewhere",
            hospital,
            "subjectAltName=DNS:elsewhere.example\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        encrypted_key=encrypted,
    )

"""DICOM TLS (PS3.15 B.9 / BCP 195): the server context of the DICOM port and the client
context for sending results to the PACS.

TLS 1.2 is the minimum both ways.  With ``tls_cert`` set the DICOM port speaks TLS only;
clients must then present a certificate signed by a CA in ``tls_ca`` unless
``tls_require_client_cert`` is false.  Sending (``pacs_tls``) presents the same certificate
and verifies the PACS against ``tls_ca`` (or the system CAs when it is unset), host name
included, so the PACS certificate must name the host given in ``pacs``.

Every file problem is a ``ConfigError`` naming the setting, raised while the node starts.
Nothing here logs or returns key material: only subjects, issuers, expiry and file names.
"""

from __future__ import annotations

import _ssl
import datetime as dt
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dicom_node.errors import ConfigError

log = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
EXPIRY_WARNING_DAYS = 30


class ClientTlsSettings(Protocol):
    """What the client context reads (``config.Settings`` has it)."""

    @property
    def tls_cert(self) -> Path | None: ...
    @property
    def tls_key(self) -> Path | None: ...
    @property
    def tls_ca(self) -> Path | None: ...


class TlsSettings(ClientTlsSettings, Protocol):
    """What the DICOM port's context and its description read."""

    @property
    def tls_enabled(self) -> bool: ...
    @property
    def requires_client_cert(self) -> bool: ...
    @property
    def pacs_tls(self) -> bool: ...
    @property
    def port(self) -> int: ...


@dataclass(frozen=True)
class CertificateInfo:
    """What may be logged about a certificate."""

    subject: str
    issuer: str
    not_after: dt.datetime

    @property
    def days_left(self) -> float:
        return (self.not_after - dt.datetime.now(dt.UTC)).total_seconds() / 86400


def server_context(settings: TlsSettings) -> ssl.SSLContext | None:
    """The DICOM port's context, or None when ``tls_cert`` is unset (plain DICOM)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_identity(context, settings.tls_cert, settings.tls_key)
    if settings.tls_ca is not None:
        _load_ca(context, settings.tls_ca)
    if settings.requires_client_cert:
        if settings.tls_ca is None:
            raise ConfigError(
                "tls_ca (DICOM_NODE_TLS_CA): needed to verify client certificates "
                "(or set tls_require_client_cert = false)"
            )
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        # Without a CA there is nothing to check a client certificate against.
        context.verify_mode = ssl.CERT_OPTIONAL if settings.tls_ca else ssl.CERT_NONE
    return context


def client_context(settings: ClientTlsSettings, check_hostname: bool = True) -> ssl.SSLContext:
    """Context for associations the node opens (results to the PACS, ``echo``/``send``).

    ``check_hostname`` is only turned off for checks against the node itself, whose
    certificate names its public host rather than the loopback address used to reach it.
    """
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigError("pacs_tls (DICOM_NODE_PACS_TLS): needs tls_cert and tls_key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION
    _load_identity(context, settings.tls_cert, settings.tls_key)
    if settings.tls_ca is not None:
        _load_ca(context, settings.tls_ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def certificate_info(path: Path, setting: str = "tls_cert") -> CertificateInfo:
    """Subject, issuer and expiry of the first certificate in a PEM file."""
    _check_readable(path, setting)
    # The only stdlib parser for a certificate file that is not loaded as a CA.
    decode: Any = getattr(_ssl, "_test_decode_cert", None)
    if decode is None:  # pragma: no cover - every CPython 3.11+ has it
        return CertificateInfo("?", "?", dt.datetime.max.replace(tzinfo=dt.UTC))
    try:
        fields = decode(str(path))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"{_label(setting)}: {path} is not a PEM certificate ({_reason(exc)})"
        ) from None
    not_after = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(fields["notAfter"]), dt.UTC)
    return CertificateInfo(_name(fields["subject"]), _name(fields["issuer"]), not_after)


def peer_subject(sock: ssl.SSLSocket) -> str | None:
    """The verified peer certificate's subject, or None when the peer sent none."""
    try:
        cert = sock.getpeercert()
    except (ValueError, OSError):
        return None
    return _name(cert["subject"]) if cert and "subject" in cert else None


def describe(settings: TlsSettings) -> str:
    """One log line about the DICOM TLS setup (no key material)."""
    if not settings.tls_enabled:
        return (
            "DICOM TLS is off: associations and images travel in clear text "
            "(set tls_cert, tls_key and tls_ca on untrusted networks)"
        )
    assert settings.tls_cert is not None
    cert = certificate_info(settings.tls_cert)
    clients = (
        f"client certificates required, trusted CAs from {settings.tls_ca}"
        if settings.requires_client_cert
        else "client certificates NOT required"
        + (f" (verified against {settings.tls_ca} when sent)" if settings.tls_ca else "")
    )
    sending = "results to the PACS over TLS" if settings.pacs_tls else "results sent without TLS"
    return (
        f"DICOM TLS on (TLS 1.2+, TLS only on port {settings.port}): certificate "
        f"{settings.tls_cert} subject {cert.subject!r} issuer {cert.issuer!r} valid until "
        f"{cert.not_after:%Y-%m-%d %H:%M} UTC; {clients}; {sending}"
    )


def _load_identity(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    info = certificate_info(cert, "tls_cert")
    if info.days_left < 0:
        raise ConfigError(
            f"{_label('tls_cert')}: certificate {cert} expired on {info.not_after:%Y-%m-%d}"
        )
    if info.days_left < EXPIRY_WARNING_DAYS:
        log.warning(
            "TLS certificate %s expires in %.0f day(s) (%s)", cert, info.days_left, info.not_after
        )
    _check_readable(key, "tls_key")

    def no_passphrase() -> bytes:
        # Never prompt on a terminal: the node runs unattended.
        raise ConfigError(
            f"{_label('tls_key')}: {key} is encrypted; give the node an unencrypted key "
            "readable only by its user"
        )

    try:
        context.load_cert_chain(str(cert), str(key), password=no_passphrase)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{_label('tls_key')}: cannot use {key} with {cert} ({_reason(exc)}; "
            "is it the matching PEM private key?)"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    _check_readable(ca, "tls_ca")
    try:
        context.load_verify_locations(cafile=str(ca))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{_label('tls_ca')}: {ca} holds no usable PEM certificate ({_reason(exc)})"
        ) from None


def _check_readable(path: Path, setting: str) -> None:
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ConfigError(f"{_label(setting)}: cannot read {path}: {exc.strerror}") from None


def _name(rdns: Any) -> str:
    """``((('commonName', 'x'),), ...)`` as ``CN=x,O=y``."""
    short = {
        "commonName": "CN",
        "organizationName": "O",
        "organizationalUnitName": "OU",
        "countryName": "C",
        "localityName": "L",
        "stateOrProvinceName": "ST",
    }
    parts = [f"{short.get(key, key)}={value}" for rdn in rdns for key, value in rdn]
    return ",".join(parts)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc).strip() or type(exc).__name__


def _label(name: str) -> str:
    return f"{name} (DICOM_NODE_{name.upper()})"

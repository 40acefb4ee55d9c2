"""TLS and client authentication of the HTTP ports, built once at start from the settings.

Each port (``admin``: ``/healthz``, ``/metrics``; ``dicomweb``: STOW-RS) has ``<port>_tls``
(HTTPS with the node's ``tls_cert`` / ``tls_key``, TLS 1.2+) and ``<port>_auth``:

* ``none``: anyone who reaches the port;
* ``mtls``: a client certificate signed by a CA in ``tls_ca``, checked in the TLS handshake
  (a client without one never gets to send a request; on the admin port the certificate is
  optional in the handshake so that ``/healthz`` stays open, and every other path answers
  403 without one);
* ``token``: ``Authorization: Bearer <token>``, the token read from ``<port>_token_file`` at
  start and compared in constant time; 401 with ``WWW-Authenticate: Bearer`` otherwise.

A port bound to an address other than loopback must have both TLS and authentication, or the
node refuses to start, unless ``allow_insecure_http`` says a proxy or firewall protects it.
Every problem is a ``ConfigError`` naming the setting; nothing here logs a token.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dicom_node import tls
from dicom_node.errors import ConfigError
from dicom_node.web.server import Access, Limits, PortPolicy

log = logging.getLogger(__name__)

MIN_TOKEN_LENGTH = 16
# RFC 6750 b64token characters, so the token survives any HTTP client unchanged.
_TOKEN_CHARACTERS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/="
)


class HttpSettings(tls.ClientTlsSettings, Protocol):
    """What the HTTP ports read of the configuration (``config.Settings`` has it)."""

    @property
    def http_host(self) -> str: ...
    @property
    def http_port(self) -> int: ...
    @property
    def dicomweb_host(self) -> str: ...
    @property
    def dicomweb_port(self) -> int | None: ...
    @property
    def admin_tls(self) -> bool: ...
    @property
    def admin_auth(self) -> str: ...
    @property
    def admin_token_file(self) -> Path | None: ...
    @property
    def dicomweb_tls(self) -> bool: ...
    @property
    def dicomweb_auth(self) -> str: ...
    @property
    def dicomweb_token_file(self) -> Path | None: ...
    @property
    def allow_insecure_http(self) -> bool: ...
    @property
    def http_header_timeout_seconds(self) -> float: ...
    @property
    def http_request_timeout_seconds(self) -> float: ...
    @property
    def http_min_body_kib_per_second(self) -> float: ...
    @property
    def http_body_grace_seconds(self) -> float: ...
    @property
    def http_max_connections(self) -> int: ...


@dataclass(frozen=True)
class PortSecurity:
    """One port's TLS and authentication settings, with the names to quote in errors."""

    prefix: str  # "admin" or "dicomweb": the settings are <prefix>_tls, _auth, _token_file
    host_setting: str
    host: str
    port: int
    tls: bool
    auth: str
    token_file: Path | None


@dataclass(frozen=True)
class _HttpsTls:
    """The DICOM TLS settings seen by ``tls.server_context``, with this port's client rule."""

    tls_cert: Path | None
    tls_key: Path | None
    tls_ca: Path | None
    requires_client_cert: bool
    port: int
    tls_enabled: bool = True
    pacs_tls: bool = False


def admin_security(settings: HttpSettings) -> PortSecurity:
    return PortSecurity(
        "admin",
        "http_host",
        settings.http_host,
        settings.http_port,
        settings.admin_tls,
        settings.admin_auth,
        settings.admin_token_file,
    )


def dicomweb_security(settings: HttpSettings) -> PortSecurity:
    assert settings.dicomweb_port is not None
    return PortSecurity(
        "dicomweb",
        "dicomweb_host",
        settings.dicomweb_host,
        settings.dicomweb_port,
        settings.dicomweb_tls,
        settings.dicomweb_auth,
        settings.dicomweb_token_file,
    )


def limits(settings: HttpSettings) -> Limits:
    return Limits(
        header_timeout_seconds=settings.http_header_timeout_seconds,
        request_timeout_seconds=settings.http_request_timeout_seconds,
        min_body_kib_per_second=settings.http_min_body_kib_per_second,
        body_grace_seconds=settings.http_body_grace_seconds,
        max_connections=settings.http_max_connections,
    )


def admin_policy(settings: HttpSettings) -> PortPolicy:
    """The admin port's policy; ``/healthz`` stays open for load balancers."""
    security = admin_security(settings)
    check_exposure(security, settings.allow_insecure_http)
    return PortPolicy(
        "admin HTTP", limits(settings), access(security, settings, open_paths={"/healthz"})
    )


def dicomweb_policy(settings: HttpSettings) -> PortPolicy:
    security = dicomweb_security(settings)
    check_exposure(security, settings.allow_insecure_http)
    return PortPolicy("STOW-RS", limits(settings), access(security, settings))


def access(
    security: PortSecurity, settings: tls.ClientTlsSettings, open_paths: set[str] | None = None
) -> Access:
    """The TLS context and token of one port (ConfigError naming the setting on a problem)."""
    context: ssl.SSLContext | None = None
    if security.tls:
        context = tls.server_context(
            _HttpsTls(
                settings.tls_cert,
                settings.tls_key,
                settings.tls_ca,
                # Optional (verified when sent) where open paths need none; the handler checks.
                requires_client_cert=security.auth == "mtls" and not open_paths,
                port=security.port,
            )
        )
    token = None
    if security.auth == "token":
        setting = f"{security.prefix}_token_file"
        if security.token_file is None:
            raise ConfigError(f"{_label(f'{security.prefix}_auth')}: token needs {setting}")
        token = read_token(security.token_file, setting)
    return Access(context, token, frozenset(open_paths or ()), security.auth)


def read_token(path: Path, setting: str) -> bytes:
    """The bearer token in ``path``: one line of RFC 6750 characters, at least 16 of them."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{_label(setting)}: {path} holds non-ASCII characters") from None
    except OSError as exc:
        raise ConfigError(f"{_label(setting)}: cannot read {path}: {exc.strerror}") from None
    if not text:
        raise ConfigError(f"{_label(setting)}: {path} is empty")
    if not set(text) <= _TOKEN_CHARACTERS:
        raise ConfigError(
            f"{_label(setting)}: {path} must hold one token of letters, digits and -._~+/= "
            "(e.g. made by `openssl rand -hex 32`)"
        )
    if len(text) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"{_label(setting)}: the token in {path} is shorter than {MIN_TOKEN_LENGTH} "
            "characters (e.g. `openssl rand -hex 32` makes a good one)"
        )
    if path.stat().st_mode & 0o077:
        log.warning("%s: %s is readable by other users (chmod 600 it)", setting, path)
    return text.encode("ascii")


def check_exposure(security: PortSecurity, allow_insecure: bool) -> None:
    """A port off loopback needs TLS and authentication, unless explicitly allowed."""
    if allow_insecure or is_loopback(security.host):
        return
    if security.tls and security.auth != "none":
        return
    missing = " and ".join(
        [
            *([] if security.tls else [f"{security.prefix}_tls = true"]),
            *([] if security.auth != "none" else [f"{security.prefix}_auth = mtls or token"]),
        ]
    )
    raise ConfigError(
        f"{_label(security.host_setting)}: {security.host!r} is not a loopback address, so this "
        f"port needs {missing} (or allow_insecure_http = true where a proxy or firewall "
        "protects it)"
    )


def is_loopback(host: str) -> bool:
    """True when every address ``host`` stands for is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False  # the bind will fail anyway, with its own message
    addresses = {str(info[4][0]).split("%", 1)[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def _label(name: str) -> str:
    return f"{name} (DICOM_NODE_{name.upper()})"

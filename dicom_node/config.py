"""The node's settings: one typed, frozen object.

Sources, lowest precedence first: defaults in this module, an optional TOML file
(``--config``), ``DICOM_NODE_*`` environment variables, command-line flags.  Every value is
validated once at start; an invalid one raises ``ConfigError`` naming the setting, its
environment variable and what was wrong, so the node never starts half-configured.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_node.errors import ConfigError

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: 16 chars, no backslash
_PACS = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")

ENV_PREFIX = "DICOM_NODE_"

# Quiet period per modality: radiographs arrive in one burst, a CT series in hundreds of
# instances over tens of seconds.
DEFAULT_QUIET_SECONDS: dict[str, float] = {"CR": 5.0, "DX": 5.0, "CT": 20.0}
FALLBACK_QUIET_SECONDS = 10.0

# What a node process does (``serve --roles``): receive and file, decide when studies are
# complete, run the models, deliver the results.  One process does all four by default.
ROLES: tuple[str, ...] = ("intake", "assembly", "worker", "sender")

# Client authentication on an HTTP port (``admin_auth``, ``dicomweb_auth``; see ``web.auth``).
HTTP_AUTH_MODES: tuple[str, ...] = ("none", "mtls", "token")


@dataclass(frozen=True)
class PacsAddress:
    """Where results go: ``AE@host:port``."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, setting: str = "pacs") -> PacsAddress:
        match = _PACS.match(text.strip())
        if not match:
            raise ConfigError(f"{_label(setting)}: expected AE@host:port, got {text!r}")
        address = cls(match["ae"].strip(), match["host"], int(match["port"]))
        _check_ae(address.ae_title, setting)
        _check_port(address.port, setting)
        return address


@dataclass(frozen=True)
class DicomWebAddress:
    """Where results go by STOW-RS: ``dicomweb+http(s)://host:port/path`` (the DICOMweb root)."""

    url: str  # without the ``dicomweb+`` prefix

    def __str__(self) -> str:
        return DICOMWEB_SCHEME + self.url

    @classmethod
    def parse(cls, text: str, setting: str = "pacs") -> DicomWebAddress:
        url = text.strip().removeprefix(DICOMWEB_SCHEME).rstrip("/")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(
                f"{_label(setting)}: expected dicomweb+http://host:port/path, got {text!r}"
            )
        if parts.username or parts.password or parts.query or parts.fragment:
            # Credentials in the URL would reach the job log and the logs.
            raise ConfigError(f"{_label(setting)}: no credentials, query or fragment in the URL")
        if len(str(cls(url))) > MAX_DESTINATION_LENGTH:
            raise ConfigError(f"{_label(setting)}: longer than {MAX_DESTINATION_LENGTH} characters")
        return cls(url)


Destination = PacsAddress | DicomWebAddress
DICOMWEB_SCHEME = "dicomweb+"
MAX_DESTINATION_LENGTH = 128  # the job log's deliveries.destination column


def parse_destination(text: str, setting: str = "pacs") -> Destination:
    """``AE@host:port`` (C-STORE) or ``dicomweb+http(s)://...`` (STOW-RS)."""
    if text.strip().lower().startswith(DICOMWEB_SCHEME):
        return DicomWebAddress.parse(text, setting)
    return PacsAddress.parse(text, setting)


@dataclass(frozen=True)
class Settings:
    """Effective configuration of one node process."""

    ae_title: str = "AINODE"
    host: str = "127.0.0.1"
    port: int = 11112
    http_host: str = "127.0.0.1"
    http_port: int = 8110
    # STOW-RS intake (``POST /dicom-web/studies``) on this port; None: off.
    dicomweb_port: int | None = None
    dicomweb_host: str = "127.0.0.1"
    # Parts (instances) in one STOW-RS request; more are refused whole (413) before anything
    # is filed.  1000 holds a thin-slice chest CT series (about 600 slices at 0.625 mm).
    stow_max_parts_per_request: int = 1000
    # Both HTTP ports (admin, STOW-RS), see ``web``: TLS handshake + request line + headers
    # within the first; a whole request within the second; a body slower than the minimum
    # rate (averaged over the time spent waiting for it, after the grace) is dropped;
    # connections at once per port.
    http_header_timeout_seconds: float = 10.0
    http_request_timeout_seconds: float = 900.0
    http_min_body_kib_per_second: float = 16.0
    http_body_grace_seconds: float = 10.0
    http_max_connections: int = 64
    # HTTPS with tls_cert / tls_key, and who may connect: none, mtls (a client certificate
    # from tls_ca) or token (``Authorization: Bearer``, the token read from the file).
    admin_tls: bool = False
    admin_auth: str = "none"
    admin_token_file: Path | None = None
    dicomweb_tls: bool = False
    dicomweb_auth: str = "none"
    dicomweb_token_file: Path | None = None
    # A port off loopback without TLS and authentication refuses to start unless this is
    # set (a proxy or firewall protects it; the docker-compose demo).
    allow_insecure_http: bool = False
    data_dir: Path = Path("var")
    # The job log: None = the SQLite file in data_dir; ``postgresql+psycopg://user@host/db``
    # for one job log shared by several node processes and hosts.
    database_url: str | None = None
    roles: tuple[str, ...] = ROLES
    # How this process's workers appear in the job log (``dicom-node jobs``); None:
    # ``host:pid``.  A claim not renewed within the lease is lost and the job re-queued, at
    # most ``job_max_attempts`` claims in all, then failed.
    worker_name: str | None = None
    worker_lease_seconds: float = 60.0
    job_max_attempts: int = 3
    # ``AE@host:port`` (C-STORE) or ``dicomweb+http://host:port/dicom-web`` (STOW-RS); None:
    # results stay in ``outbox/`` (a site names its PACS; the demo sets its Orthanc).
    pacs: Destination | None = None
    # Empty means any calling AE may connect (logged as a warning at start).
    allowed_aes: tuple[str, ...] = ()
    require_called_ae: bool = True
    # One value for every modality when set; otherwise ``quiet_seconds_by_modality``.
    study_quiet_seconds: float | None = None
    quiet_seconds_by_modality: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_QUIET_SECONDS)
    )
    # After a sender releases its association, its studies start this much later instead of
    # after the quiet period (None: wait for the quiet period as for an abort).
    release_grace_seconds: float | None = 1.0
    # A study whose last association ended without release (A-ABORT, a dropped connection, a
    # timeout, the node stopped mid-association) waits this long after its last instance for
    # the sender's resend instead of the quiet period (never less than it); without a resend it
    # is analysed then, its outputs marked unfinished.
    interrupted_study_hold_seconds: float = 600.0
    # A calling AE listed here is accepted only from that host (Orthanc's
    # DicomCheckModalityHost): TOML table ``AE = "host"``, env ``AE@host,AE2@host2``.
    ae_hosts: Mapping[str, str] = field(default_factory=dict)
    # Associations at once; the last ``reserved_associations`` are kept for allowed AEs.
    maximum_associations: int = 16
    reserved_associations: int = 4
    # Largest PDU the node receives (A-ASSOCIATE-AC Maximum Length); 0 = unlimited.  Larger
    # PDUs mean fewer Python-level reads per instance; 131072 is DCMTK's largest.
    max_pdu_bytes: int = 131072
    # A peer must complete its A-ASSOCIATE-RQ within this time (idle sockets are dropped).
    association_request_timeout_seconds: float = 5.0
    # Largest accepted instance (as received, and once inflated when deflated) and largest
    # decoded pixel data per instance, in MiB.  256 MiB is an 8192 x 8192 16-bit image twice
    # over (seven times the largest DX detector); the X-ray pipeline peaks at about seven
    # times an image's decoded size, so this also bounds the worker's memory per image.
    max_instance_mb: int = 1024
    max_decoded_mb: int = 256
    min_free_disk_mb: int = 1024
    fsync: bool = True
    worker_threads: int = 1
    preload_models: bool = True
    models_dir: Path | None = None
    # 2 s doubling to 15 min, 20 attempts: retries span about 2.8 hours of PACS outage.
    send_max_attempts: int = 20
    send_backoff_seconds: float = 2.0
    send_backoff_max_seconds: float = 900.0
    network_timeout_seconds: float = 30.0
    # DICOM TLS: with a certificate the DICOM port speaks TLS only (TLS 1.2+).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # trusted peer certificates (PEM bundle)
    # Mutual TLS; unset means true whenever TLS is on.
    tls_require_client_cert: bool | None = None
    pacs_tls: bool = False  # send results to the PACS over TLS with the same certificate
    # JSON-lines audit trail (associations, instances, deliveries, admin actions).
    audit_log: Path | None = None
    log_level: str = "INFO"
    # Patient names/IDs never reach logs unless an admin explicitly asks for them.
    log_patient_data: bool = False

    def __post_init__(self) -> None:
        _check_ae(self.ae_title, "ae_title")
        for ae in self.allowed_aes:
            _check_ae(ae, "allowed_aes")
        _check_port(self.port, "port")
        _check_port(self.http_port, "http_port")
        if self.dicomweb_port is not None:
            _check_port(self.dicomweb_port, "dicomweb_port")
        if self.stow_max_parts_per_request < 1:
            raise ConfigError(f"{_label('stow_max_parts_per_request')}: must be >= 1")
        if self.pacs_tls and isinstance(self.pacs, DicomWebAddress):
            raise ConfigError(
                f"{_label('pacs_tls')}: is for DICOM TLS; a DICOMweb PACS uses https:// instead"
            )
        if not self.host:
            raise ConfigError(f"{_label('host')}: must not be empty")
        for name in ("study_quiet_seconds", "release_grace_seconds"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{_label(name)}: must be >= 0, got {value}")
        hold = self.interrupted_study_hold_seconds
        if not (math.isfinite(hold) and hold >= 0):
            name = _label("interrupted_study_hold_seconds")
            raise ConfigError(f"{name}: must be a number of seconds >= 0, got {hold}")
        for modality, seconds in self.quiet_seconds_by_modality.items():
            if seconds < 0:
                raise ConfigError(f"quiet_seconds_by_modality.{modality}: must be >= 0")
        for ae, ae_host in self.ae_hosts.items():
            _check_ae(ae, "ae_hosts")
            if not ae_host.strip():
                raise ConfigError(f"{_label('ae_hosts')}: empty host for {ae}")
        if self.max_pdu_bytes != 0 and self.max_pdu_bytes < 4096:
            raise ConfigError(f"{_label('max_pdu_bytes')}: must be 0 (unlimited) or >= 4096")
        if self.maximum_associations < 1:
            raise ConfigError(f"{_label('maximum_associations')}: must be >= 1")
        if not 0 <= self.reserved_associations < self.maximum_associations:
            raise ConfigError(
                f"{_label('reserved_associations')}: must be 0 to maximum_associations - 1"
            )
        for name in ("association_request_timeout_seconds",):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{_label(name)}: must be > 0")
        if self.max_instance_mb < 1 or self.max_decoded_mb < 1:
            raise ConfigError(f"{_label('max_instance_mb')}: sizes must be >= 1 MiB")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(f"{_label('tls_cert')}: tls_cert and tls_key go together")
        if self.pacs_tls and self.tls_cert is None:
            raise ConfigError(f"{_label('pacs_tls')}: needs tls_cert and tls_key")
        if self.min_free_disk_mb < 0:
            raise ConfigError(f"{_label('min_free_disk_mb')}: must be >= 0")
        unknown_roles = sorted(set(self.roles) - set(ROLES))
        if unknown_roles or not self.roles:
            raise ConfigError(
                f"{_label('roles')}: a comma-separated subset of {','.join(ROLES)}"
                + (f", got {','.join(unknown_roles)}" if unknown_roles else "")
            )
        if self.database_url is not None and not self.database_url.startswith(
            ("sqlite", "postgresql")
        ):
            raise ConfigError(
                f"{_label('database_url')}: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
            )
        if self.worker_lease_seconds < 3:
            raise ConfigError(f"{_label('worker_lease_seconds')}: must be >= 3")
        if self.job_max_attempts < 1:
            raise ConfigError(f"{_label('job_max_attempts')}: must be >= 1")
        if self.worker_threads < 0:
            raise ConfigError(f"{_label('worker_threads')}: must be >= 0 (0 = intake only)")
        if self.send_max_attempts < 1:
            raise ConfigError(f"{_label('send_max_attempts')}: must be >= 1")
        if self.send_backoff_seconds <= 0 or self.send_backoff_max_seconds <= 0:
            raise ConfigError(f"{_label('send_backoff_seconds')}: must be > 0")
        self._check_http()
        if self.network_timeout_seconds <= 0:
            raise ConfigError(f"{_label('network_timeout_seconds')}: must be > 0")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"{_label('log_level')}: one of DEBUG, INFO, WARNING, ERROR")

    def _check_http(self) -> None:
        for name in (
            "http_header_timeout_seconds",
            "http_request_timeout_seconds",
            "http_body_grace_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{_label(name)}: must be > 0")
        if self.http_min_body_kib_per_second < 0:
            raise ConfigError(f"{_label('http_min_body_kib_per_second')}: must be >= 0 (0: off)")
        if self.http_max_connections < 1:
            raise ConfigError(f"{_label('http_max_connections')}: must be >= 1")
        for port in ("admin", "dicomweb"):
            tls_on, auth = getattr(self, f"{port}_tls"), getattr(self, f"{port}_auth")
            if auth not in HTTP_AUTH_MODES:
                raise ConfigError(
                    f"{_label(f'{port}_auth')}: one of {', '.join(HTTP_AUTH_MODES)}, got {auth!r}"
                )
            if tls_on and self.tls_cert is None:
                raise ConfigError(f"{_label(f'{port}_tls')}: needs tls_cert and tls_key")
            if auth == "mtls" and (not tls_on or self.tls_ca is None):
                raise ConfigError(f"{_label(f'{port}_auth')}: mtls needs {port}_tls and tls_ca")
            if auth == "token" and getattr(self, f"{port}_token_file") is None:
                raise ConfigError(f"{_label(f'{port}_auth')}: token needs {port}_token_file")

    def quiet_seconds(self, modality: str | None) -> float:
        """How long a study must stay quiet before it counts as complete."""
        if self.study_quiet_seconds is not None:
            return self.study_quiet_seconds
        return self.quiet_seconds_by_modality.get(modality or "", FALLBACK_QUIET_SECONDS)

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @property
    def requires_client_cert(self) -> bool:
        if self.tls_require_client_cert is None:
            return self.tls_enabled
        return self.tls_require_client_cert

    @property
    def inbox_dir(self) -> Path:
        return self.data_dir / "inbox"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "jobs.sqlite"

    @property
    def joblog_url(self) -> str:
        return self.database_url or f"sqlite:///{self.database_path}"

    @property
    def shared_joblog(self) -> bool:
        """True unless one process owns the job log (SQLite, every role): then at start
        everything left running is its own, from before a crash."""
        return not self.joblog_url.startswith("sqlite") or set(self.roles) != set(ROLES)

    def has_role(self, role: str) -> bool:
        return role in self.roles

    def describe(self) -> dict[str, Any]:
        """The effective configuration as plain values.

        There are no secrets to hide: TLS settings are paths, never key material.
        """
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Path | PacsAddress | DicomWebAddress):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            if item.name == "database_url" and value:
                value = _hide_password(value)
            out[item.name] = value
        return out


def _hide_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _label(name: str) -> str:
    return f"{name} ({ENV_PREFIX}{name.upper()})"


def _check_ae(value: str, setting: str) -> None:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ConfigError(
            f"{_label(setting)}: {value!r} is not a valid AE title (1-16 characters, no backslash)"
        )


def _check_port(value: int, setting: str) -> None:
    if not 1 <= value <= 65535:
        raise ConfigError(f"{_label(setting)}: port must be 1-65535, got {value}")


def _coerce_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def _coerce(name: str, raw: Any) -> Any:
    """Turn a TOML/env/CLI value into the field's type, naming the setting on failure."""
    kind = _FIELD_KINDS[name]
    try:
        if raw is None:
            return None
        if kind == "pacs":
            if isinstance(raw, str) and raw.strip().lower() in {"", "none", "off"}:
                return None
            return parse_destination(str(raw), name)
        if kind == "aes":
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(str(item).strip() for item in items if str(item).strip())
        if kind == "roles":
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(str(item).strip().lower() for item in items if str(item).strip())
        if kind == "lower":
            return str(raw).strip().lower()
        if kind == "optstr":
            return str(raw).strip() or None
        if kind == "bool":
            return _coerce_bool(raw)
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError("expected an integer")
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "optfloat":
            if isinstance(raw, str) and raw.strip().lower() in {"", "none", "auto"}:
                return None
            return float(raw)
        if kind == "path":
            return Path(str(raw)).expanduser()
        if kind == "optpath":
            return Path(str(raw)).expanduser() if str(raw) else None
        if kind == "optport":
            if isinstance(raw, str) and raw.strip().lower() in {"", "none", "off"}:
                return None
            return int(raw)
        if kind == "optbool":
            if isinstance(raw, str) and raw.strip().lower() in {"", "auto"}:
                return None
            return _coerce_bool(raw)
        if kind == "hosts":
            if isinstance(raw, Mapping):
                return {str(k).strip(): str(v).strip() for k, v in raw.items()}
            pairs = [p.strip() for p in str(raw).split(",") if p.strip()]
            if not all("@" in p for p in pairs):
                raise ValueError(f"expected AE@host[,AE@host...], got {raw!r}")
            return {p.split("@", 1)[0].strip(): p.split("@", 1)[1].strip() for p in pairs}
        if kind == "mapping":
            if not isinstance(raw, Mapping):
                raise ValueError("expected a table of MODALITY = seconds")
            return {str(k).upper(): float(v) for k, v in raw.items()}
        return str(raw)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{_label(name)}: {exc}") from None


_FIELD_KINDS: dict[str, str] = {
    "ae_title": "str",
    "host": "str",
    "port": "int",
    "http_host": "str",
    "http_port": "int",
    "dicomweb_port": "optport",
    "dicomweb_host": "str",
    "stow_max_parts_per_request": "int",
    "http_header_timeout_seconds": "float",
    "http_request_timeout_seconds": "float",
    "http_min_body_kib_per_second": "float",
    "http_body_grace_seconds": "float",
    "http_max_connections": "int",
    "admin_tls": "bool",
    "admin_auth": "lower",
    "admin_token_file": "optpath",
    "dicomweb_tls": "bool",
    "dicomweb_auth": "lower",
    "dicomweb_token_file": "optpath",
    "allow_insecure_http": "bool",
    "data_dir": "path",
    "database_url": "optstr",
    "roles": "roles",
    "worker_name": "optstr",
    "worker_lease_seconds": "float",
    "job_max_attempts": "int",
    "pacs": "pacs",
    "allowed_aes": "aes",
    "require_called_ae": "bool",
    "study_quiet_seconds": "optfloat",
    "quiet_seconds_by_modality": "mapping",
    "release_grace_seconds": "optfloat",
    "interrupted_study_hold_seconds": "float",
    "ae_hosts": "hosts",
    "maximum_associations": "int",
    "max_pdu_bytes": "int",
    "reserved_associations": "int",
    "association_request_timeout_seconds": "float",
    "max_instance_mb": "int",
    "max_decoded_mb": "int",
    "min_free_disk_mb": "int",
    "fsync": "bool",
    "worker_threads": "int",
    "preload_models": "bool",
    "models_dir": "optpath",
    "send_max_attempts": "int",
    "send_backoff_seconds": "float",
    "send_backoff_max_seconds": "float",
    "network_timeout_seconds": "float",
    "tls_cert": "optpath",
    "tls_key": "optpath",
    "tls_ca": "optpath",
    "tls_require_client_cert": "optbool",
    "pacs_tls": "bool",
    "audit_log": "optpath",
    "log_level": "str",
    "log_patient_data": "bool",
}
assert set(_FIELD_KINDS) == {f.name for f in dataclasses.fields(Settings)}


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults, TOML file, environment and CLI overrides into validated ``Settings``."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {config_file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from None
        section = data.get("node", data)
        for key, raw in section.items():
            if key not in _FIELD_KINDS:
                raise ConfigError(f"config file {config_file}: unknown setting {key!r}")
            values[key] = _coerce(key, raw)
    env = os.environ if environ is None else environ
    for name in _FIELD_KINDS:
        env_name = ENV_PREFIX + name.upper()
        if env_name in env and _FIELD_KINDS[name] != "mapping":
            values[name] = _coerce(name, env[env_name])
    for name, raw in (overrides or {}).items():
        if raw is not None:
            values[name] = _coerce(name, raw)
    return Settings(**values)

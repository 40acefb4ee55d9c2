"""The audit trail: one JSON object per line, apart from the operational log.

It answers "who connected, what did they send, what did we send where, who changed what":
associations (accepted or refused, and why), the instances each association stored per
study, results delivered, and admin actions.  It holds UIDs, AE titles, hosts, counts and
statuses, never patient names, IDs or other data-set values.

File: ``audit_log``, or ``<data_dir>/audit.jsonl`` when unset (``audit-HOST-ROLES.jsonl`` for
a process sharing its data directory with others); rotated at 10 MiB, five old
files kept (``audit.jsonl.1`` ... ``.5``), created readable by the node's user and group only.
Only the serving process rotates; short-lived commands (``dicom-node requeue``) append.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import logging.handlers
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dicom_node.errors import ConfigError

MAX_BYTES = 10 * 1024 * 1024
BACKUP_COUNT = 5
FILE_MODE = 0o640


class AuditSettings(Protocol):
    """Where the audit trail goes (``config.Settings`` has it)."""

    @property
    def audit_log(self) -> Path | None: ...
    @property
    def data_dir(self) -> Path: ...
    @property
    def roles(self) -> tuple[str, ...]: ...
    @property
    def shared_joblog(self) -> bool: ...


def audit_path(settings: AuditSettings) -> Path:
    if settings.audit_log is not None:
        return settings.audit_log
    if settings.shared_joblog:
        # Processes sharing the data directory each rotate a file of their own.
        return settings.data_dir / f"audit-{socket.gethostname()}-{'-'.join(settings.roles)}.jsonl"
    return settings.data_dir / "audit.jsonl"


class _PrivateRotatingHandler(logging.handlers.RotatingFileHandler):
    """Rotating handler whose files are not world-readable whatever the umask."""

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        return open(fd, "a", encoding="utf-8")


@dataclass
class _Study:
    stored: list[str] = field(default_factory=list)  # SOP Instance UIDs with status 0x0000/0xB...
    refused: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)  # "0xA900" -> count


@dataclass
class _Association:
    """What one association did, gathered until it ends."""

    studies: dict[str, _Study] = field(default_factory=dict)

    def count(self) -> int:
        return sum(len(s.stored) + len(s.refused) for s in self.studies.values())


class AuditLog:
    """Thread-safe JSON-lines writer; the per-association aggregates live here."""

    def __init__(self, path: Path, rotate: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = _PrivateRotatingHandler(
            self.path,
            maxBytes=MAX_BYTES if rotate else 0,
            backupCount=BACKUP_COUNT,
            encoding="utf-8",
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._lock = threading.Lock()
        self._associations: dict[int, _Association] = {}

    @classmethod
    def for_settings(cls, settings: AuditSettings, rotate: bool = True) -> AuditLog:
        path = audit_path(settings)
        try:
            return cls(path, rotate=rotate)
        except OSError as exc:
            raise ConfigError(
                f"audit_log (DICOM_NODE_AUDIT_LOG): cannot write {path}: {exc.strerror}"
            ) from None

    def close(self) -> None:
        self._handler.close()

    # -- writing ---------------------------------------------------------------------------

    def write(self, event: str, **fields: Any) -> None:
        """One line: ``{"time": ..., "event": ..., **fields}`` (None values left out)."""
        record = {"time": _now(), "event": event}
        record.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str)
        self._handler.handle(logging.makeLogRecord({"msg": line, "args": None}))

    # -- associations -------------------------------------------------------------------------

    def association(self, outcome: str, **fields: Any) -> None:
        """An association accepted or refused (``reason``), with who and from where."""
        self.write("association", outcome=outcome, **fields)

    def instance(self, assoc: Any, study_uid: str | None, sop_uid: str | None, status: int) -> None:
        """One C-STORE outcome on ``assoc``; written per study when the association ends."""
        key = id(assoc)
        with self._lock:
            gathered = self._associations.setdefault(key, _Association())
            study = gathered.studies.setdefault(study_uid or "", _Study())
            code = f"0x{status:04X}"
            study.statuses[code] = study.statuses.get(code, 0) + 1
            (study.stored if _stored(status) else study.refused).append(sop_uid or "")

    def association_ended(self, assoc: Any, outcome: str, **fields: Any) -> int:
        """Write the association's instances per study and its end; returns the count."""
        with self._lock:
            gathered = self._associations.pop(id(assoc), _Association())
        for study_uid, study in gathered.studies.items():
            self.write(
                "instances",
                association=fields.get("association"),
                calling_ae=fields.get("calling_ae"),
                peer=fields.get("peer"),
                study_uid=study_uid or None,
                stored=len(study.stored),
                refused=len(study.refused),
                statuses=study.statuses,
                sop_instance_uids=study.stored,
                refused_sop_instance_uids=study.refused or None,
            )
        total = gathered.count()
        self.write(
            "association_end",
            outcome=outcome,
            instances=total,
            studies=len(gathered.studies),
            **fields,
        )
        return total

    # -- results and admin ---------------------------------------------------------------------

    def delivery(
        self,
        job_id: int,
        study_uid: str | None,
        destination: str,
        tls: bool,
        sop_uids: Sequence[str],
        statuses: Sequence[int | None],
        outcome: str,
        error: str | None = None,
    ) -> None:
        """One send attempt of a job's results to one destination."""
        self.write(
            "delivery",
            job_id=job_id,
            study_uid=study_uid,
            destination=destination,
            tls=tls,
            outcome=outcome,
            sop_instance_uids=list(sop_uids),
            statuses=[None if s is None else f"0x{s:04X}" for s in statuses],
            error=error,
        )

    def admin(self, action: str, **fields: Any) -> None:
        self.write("admin", action=action, user=_user(), pid=os.getpid(), **fields)


def _stored(status: int) -> bool:
    # PS3.4 B.2.3: success and warnings (0xB000, 0xB006, 0xB007) mean the instance is stored.
    return status == 0 or (status & 0xF000) == 0xB000


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())

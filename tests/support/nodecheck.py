"""Run the node in a sandbox and audit what it left: data directory, job log, log output.

Used by the fuzz suite and the fault tests.  The job log is read with SQLite in read-only
mode (``file:...?mode=ro``), so auditing never takes a write lock or creates tables, and the
listing an admin sees comes from ``dicom-node jobs --json``.

``SandboxNode`` runs ``dicom-node serve`` with its working directory in a sandbox folder that
also holds the data directory, so anything the node writes outside ``data_dir`` shows up in
``tree_outside``.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from tests.support.net import free_port
from tests.support.node import NodeProcess

UNSETTLED_STATES = ("received", "queued", "running", "sending")
FINAL_STATES = ("done", "failed", "ignored", "dead")
# "2026-01-15 09:30:00,123 INFO    dicom_node.intake.scp: ..." (dicom_node.logs)
LOG_LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
MAX_LOG_LINE = 4096
MAX_REASON = 1000
# "ValueError: invalid literal ...", "KeyError('x')", a traceback: the exception's own text
# (which may quote data set values), as opposed to a reason naming the exception's class.
RAW_EXCEPTION = re.compile(r"\b[A-Z]\w*(Error|Exception|Warning)(: |\()|Traceback \(most recent")
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def node_env(port: int, http_port: int, pacs: str, **settings: object) -> dict[str, str]:
    """``DICOM_NODE_*`` for a node on loopback; keyword arguments override (name -> value)."""
    env = {
        "DICOM_NODE_AE_TITLE": "AINODE",
        "DICOM_NODE_HOST": "127.0.0.1",
        "DICOM_NODE_PORT": str(port),
        "DICOM_NODE_HTTP_PORT": str(http_port),
        "DICOM_NODE_PACS": pacs,
        "DICOM_NODE_ALLOWED_AES": "FUZZER,MODALITY,ECHOSCU",
        "DICOM_NODE_FSYNC": "false",
        "DICOM_NODE_MIN_FREE_DISK_MB": "100",
        "DICOM_NODE_LOG_LEVEL": "INFO",
    }
    env.update({f"DICOM_NODE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class SandboxNode(NodeProcess):
    """``dicom-node serve`` with ``data_dir = sandbox/data`` and its cwd in ``sandbox``."""

    def __init__(self, sandbox: Path, log_path: Path, pacs: str = "none", **settings: object):
        self.sandbox = sandbox.resolve()
        self.sandbox.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        super().__init__(
            self.sandbox / "data",
            node_env(self.port, free_port(), pacs, **settings),
            log_path,
            cwd=self.sandbox,
        )

    def start(self, timeout: float = 180.0, wait_models: bool = True) -> None:
        super().start(timeout, wait_models)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def jobs_json(self) -> list[dict[str, Any]]:
        """``dicom-node jobs --json`` as an admin runs it (a separate process)."""
        result = subprocess.run(
            [sys.executable, "-m", "dicom_node", "jobs", "--json", "--limit", "1000000"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"dicom-node jobs --json failed: {result.stderr[-2000:]}")
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def start_node(
    nodes: list[SandboxNode],
    tmp_path: Path,
    pacs: str = "none",
    wait_models: bool = True,
    **settings: object,
) -> SandboxNode:
    """Start a sandboxed node for a test; ``nodes`` (the ``sandbox`` fixture) stops it."""
    node = SandboxNode(tmp_path / "sandbox", tmp_path / "node.log", pacs, **settings)
    nodes.append(node)
    node.start(wait_models=wait_models)
    return node


def tree(root: Path, skip: Path | None = None) -> set[str]:
    """Every path under ``root`` (relative), except ``skip`` and what lies below it."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None and here == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = here / name
            if skip is not None and path == skip:
                continue
            found.add(str(path.relative_to(root)))
    return found


# -- the job log, read only ------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceRow:
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    path: str


@dataclass(frozen=True)
class RejectionRow:
    sop_instance_uid: str | None
    study_instance_uid: str | None
    status: int
    reason: str
    quarantine_path: str | None


@dataclass(frozen=True)
class JobRowView:
    job_id: int
    study_instance_uid: str
    version: int
    state: str
    error: str | None
    instances: int


class JobLogReader:
    def __init__(self, database: Path) -> None:
        self.database = database

    def _connect(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)
            connection.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        except sqlite3.OperationalError:
            # A WAL database whose -shm file went away with the node cannot be opened read-only.
            connection = sqlite3.connect(self.database, timeout=10)
        connection.text_factory = lambda b: b.decode("utf-8", "replace")
        return connection

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        connection = self._connect()
        try:
            return list(connection.execute(sql))
        finally:
            connection.close()

    def instances(self) -> list[InstanceRow]:
        rows = self.query(
            "SELECT i.sop_instance_uid, s.study_instance_uid, i.series_instance_uid, i.path "
            "FROM instances i JOIN studies s ON s.id = i.study_id"
        )
        return [InstanceRow(*row) for row in rows]

    def rejections(self) -> list[RejectionRow]:
        rows = self.query(
            "SELECT sop_instance_uid, study_instance_uid, status, reason, quarantine_path "
            "FROM rejections"
        )
        return [RejectionRow(*row) for row in rows]

    def jobs(self) -> list[JobRowView]:
        rows = self.query(
            "SELECT j.id, s.study_instance_uid, j.version, j.state, j.error, j.instance_count "
            "FROM jobs j JOIN studies s ON s.id = j.study_id"
        )
        return [JobRowView(*row) for row in rows]

    def state_counts(self) -> Counter[str]:
        return Counter(dict(self.query("SELECT state, count(*) FROM jobs GROUP BY state")))

    def text_values(self) -> Iterator[tuple[str, str, str]]:
        """(table, column, value) for every text value in every table."""
        for (table,) in self.query("SELECT name FROM sqlite_master WHERE type = 'table'"):
            connection = self._connect()
            try:
                cursor = connection.execute(f'SELECT * FROM "{table}"')
                columns = [d[0] for d in cursor.description]
                for row in cursor:
                    for column, value in zip(columns, row, strict=True):
                        if isinstance(value, str):
                            yield table, column, value
            finally:
                connection.close()

    def wait_settled(self, timeout: float, quiet: float = 3.0) -> Counter[str]:
        """Wait until no job is unsettled for ``quiet`` seconds; returns the state counts."""
        deadline = time.monotonic() + timeout
        settled_since: float | None = None
        counts: Counter[str] = Counter()
        while time.monotonic() < deadline:
            counts = self.state_counts()
            if any(counts.get(s, 0) for s in UNSETTLED_STATES):
                settled_since = None
            elif settled_since is None:
                settled_since = time.monotonic()
            elif time.monotonic() - settled_since >= quiet:
                return counts
            time.sleep(0.5)
        return counts


# -- audits --------------------------------------------------------------------------------


def leftover_files(data_dir: Path) -> list[str]:
    """Temporary files of atomic writes that stayed behind."""
    return sorted(
        str(p.relative_to(data_dir))
        for p in data_dir.rglob("*")
        if p.is_file() and (p.name.startswith(".tmp-") or p.suffix == ".part")
    )


def orphan_problems(
    data_dir: Path, instances: list[InstanceRow], rejections: list[RejectionRow]
) -> list[str]:
    """Files in inbox/ without an instance row, in quarantine/ without a rejection row, etc."""
    problems = [f"temporary file left behind: {p}" for p in leftover_files(data_dir)]
    known = {str(Path(row.path).resolve()) for row in instances}
    inbox = data_dir / "inbox"
    for path in sorted(p for p in inbox.rglob("*") if p.is_file()):
        if str(path.resolve()) not in known and not path.name.startswith(".tmp-"):
            problems.append(f"orphan inbox file (no instance row): {path.relative_to(data_dir)}")
    quarantined = {str(Path(r.quarantine_path).resolve()) for r in rejections if r.quarantine_path}
    for path in sorted(p for p in (data_dir / "quarantine").rglob("*") if p.is_file()):
        if str(path.resolve()) not in quarantined and not path.name.startswith(".tmp-"):
            problems.append(
                f"quarantine file without a rejection row: {path.relative_to(data_dir)}"
            )
    for row in instances:
        path = Path(row.path)
        if not path.is_file():
            problems.append(f"instance row {row.sop_instance_uid} names a missing file {path}")
            continue
        try:
            path.resolve().relative_to(inbox.resolve())
        except ValueError:
            problems.append(f"instance file outside the inbox: {path}")
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            study = str(header.get("StudyInstanceUID", ""))
            sop = str(header.get("SOPInstanceUID", ""))
        except Exception as exc:  # a file the node accepted but cannot read back
            problems.append(f"inbox file {path.name} unreadable: {type(exc).__name__}")
            continue
        if study != row.study_instance_uid or sop != row.sop_instance_uid:
            problems.append(
                f"instance row {row.sop_instance_uid} of study {row.study_instance_uid} points "
                f"to a file of study {study!r}, SOP {sop!r} ({path.relative_to(data_dir)})"
            )
    for rejection in rejections:
        kept = rejection.quarantine_path
        if kept and not Path(kept).is_file():
            problems.append(f"rejection row names a missing quarantine file {kept}")
    return problems


def reason_problems(reason: str | None, what: str) -> list[str]:
    """A job error / rejection reason must be one bounded line, not a raw exception."""
    if not reason:
        return [f"{what}: no reason given"]
    problems = []
    if "\n" in reason or "\r" in reason:
        problems.append(f"{what}: reason spans several lines: {reason[:300]!r}")
    elif CONTROL_CHARS.search(reason):
        problems.append(f"{what}: reason holds control characters: {reason[:300]!r}")
    if len(reason) > MAX_REASON:
        problems.append(f"{what}: reason of {len(reason)} characters: {reason[:200]!r}...")
    if RAW_EXCEPTION.search(reason):
        problems.append(f"{what}: raw exception text: {reason[:300]!r}")
    return problems


def log_line_problems(text: str, injected: str | None = None) -> list[str]:
    """Over-long lines, control characters, planted line breaks that started a line, threads
    that died of an unhandled exception."""
    problems = []
    for number, line in enumerate(text.split("\n"), 1):
        if line.startswith("Exception in thread"):
            problems.append(f"log line {number}: a thread died of an unhandled exception: {line}")
        if len(line) > MAX_LOG_LINE:
            problems.append(f"log line {number} has {len(line)} characters: {line[:160]!r}...")
        if CONTROL_CHARS.search(line.replace("\t", " ")):
            problems.append(f"log line {number} holds control characters: {line[:200]!r}")
        if injected and injected in line and not LOG_LINE_START.match(line):
            problems.append(f"log line {number} was forged by a planted line break: {line[:200]!r}")
    return problems


def find_markers(text: str, patterns: Mapping[str, re.Pattern[str]]) -> dict[str, list[str]]:
    """name -> matches of each pattern in ``text``."""
    found = {}
    for name, pattern in patterns.items():
        hits = pattern.findall(text)
        if hits:
            found[name] = hits
    return found

"""Durable files: atomic writes into the inbox, outbox and quarantine folders.

A file is written to a temporary name in the target folder, flushed (and fsynced when
configured), then renamed: a crash leaves either the old file or the new one, never half.
Paths are built from UIDs only after they have been checked to be valid UIDs, so a hostile
dataset cannot escape the data folder.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pydicom.uid import UID


def is_safe_uid(value: object) -> bool:
    """A syntactically valid UID (digits and dots, at most 64 characters)."""
    return isinstance(value, str) and bool(value) and UID(value).is_valid


def atomic_write(path: Path, data: bytes | memoryview, fsync: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_and_replace(path, lambda handle: handle.write(data), fsync)
    if fsync:
        _fsync_dir(path.parent)


def _write_and_replace(path: Path, write: Callable[[BinaryIO], object], fsync: bool) -> None:
    """Write a temporary file beside ``path`` with ``write``, then rename it over ``path``."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def adopt_file(source: Path, target: Path, fsync: bool = True) -> None:
    """Move ``source`` to ``target`` atomically (rename; copy first across file systems)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if fsync:
        with source.open("rb+") as handle:
            os.fsync(handle.fileno())
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with source.open("rb") as src:
            _write_and_replace(target, lambda out: shutil.copyfileobj(src, out, 1 << 20), fsync)
        source.unlink(missing_ok=True)
    if fsync:
        _fsync_dir(target.parent)


def remove_partial_files(root: Path, older_than_seconds: float = 0.0) -> int:
    """Delete ``.tmp-*.part`` files a crash left mid-write under ``root``; returns how many.

    ``older_than_seconds``: on storage other live nodes write to, only files no write could
    still be producing."""
    removed = 0
    cutoff = time.time() - older_than_seconds
    for leftover in root.rglob(".tmp-*.part"):
        try:
            if older_than_seconds and leftover.stat().st_mtime > cutoff:
                continue
            leftover.unlink()
        except FileNotFoundError:
            continue
        removed += 1
    return removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def inbox_path(inbox: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    return inbox / study_uid / series_uid / f"{sop_uid}.dcm"


def free_disk_mb(path: Path) -> float:
    path.mkdir(parents=True, exist_ok=True)
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize / (1024 * 1024)

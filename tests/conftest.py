"""Shared test fixtures: where the shared data set lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """``$DICOM_NODE_SHARED_DATA`` or ``../shared/data`` next to the repository."""
    return Path(os.environ.get("DICOM_NODE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "manifest.csv").is_file():
        pytest.fail(f"shared data set not found at {path} (set DICOM_NODE_SHARED_DATA)")
    return path

"""Shared test fixtures and the markers that say what each test needs (see tests/README.md)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer, unavailable_reason

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

# What the tests in each directory need beyond the Python dependencies.
DIRECTORY_MARKERS: dict[str, tuple[str, ...]] = {
    "unit": (),
    "shared_data": ("shared_data",),
    "model": ("tensorflow",),
    "integration": ("integration", "debian_tools", "tensorflow"),
    # Real node subprocess over loopback; needs TensorFlow and pydicom-data, no Debian tools.
    "fuzz": ("fuzz", "integration", "tensorflow"),
}


def shared_data_dir() -> Path:
    """``$DICOM_NODE_SHARED_DATA`` or ``../shared/data`` next to the repository."""
    return Path(os.environ.get("DICOM_NODE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "manifest.csv").is_file():
        pytest.fail(f"shared data set not found at {path} (set DICOM_NODE_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the session (skipped, with the reason, when the
    Debian package is missing); tests take a fresh database each with ``new_database()``."""
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("DICOM_NODE_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by its directory, and ``shared_data`` wherever the fixture is used."""
    for item in items:
        try:
            directory = item.path.resolve().relative_to(TESTS).parts[0]
        except (ValueError, IndexError):
            continue
        names = set(DIRECTORY_MARKERS.get(directory, ()))
        if "shared_data" in getattr(item, "fixturenames", ()):
            names.add("shared_data")
        if "postgres" in getattr(item, "fixturenames", ()):
            names.add("postgres")
        for name in sorted(names):
            item.add_marker(name)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgres: starts a throwaway PostgreSQL cluster (Debian's postgresql)"
    )
    # Set by the test modules that use a browser, not by directory.
    config.addinivalue_line(
        "markers", "browser: drives Debian's chromium with playwright-core (needs node and npm)"
    )


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs ``serve`` in-process configures the root logger on a stream pytest
    closes afterwards; later tests would then print "--- Logging error ---" tracebacks."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)

"""Validate DICOM objects with dicom3tools' ``dciodvfy`` (IOD conformance)."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path

from pydicom import Dataset


def dciodvfy_errors(source: Dataset | Path) -> list[str]:
    """The ``Error`` lines dciodvfy prints for a dataset or file (empty list: conformant)."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        raise RuntimeError("dciodvfy is not installed (apt-get install dicom3tools)")
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(source, Dataset):
            path = Path(tmp) / "object.dcm"
            buffer = io.BytesIO()
            source.save_as(buffer, enforce_file_format=True)
            path.write_bytes(buffer.getvalue())
        else:
            path = Path(source)
        result = subprocess.run(
            [binary, str(path)], capture_output=True, text=True, timeout=120, check=False
        )
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error", "Abort"))]

"""What a training run records about itself: its command, library versions, the machine."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Run", "command_line", "cpu_count", "log", "machine", "start_run", "versions"]


@dataclass(frozen=True)
class Run:
    """A run beside its hyper-parameters: what it writes, from what, and how it was started."""

    version: str  # of the artefact written
    data_dir: Path
    out_dir: Path
    command: str  # reproduces the run (:func:`command_line`)
    config: Path  # the configuration file read (``training/configs/<model>.toml``)


def start_run(name: str, module: str, args: Any, argv: Sequence[str] | None) -> Run:
    """The run a training command's parsed ``args`` (version, data, out, config) describe;
    without ``--out`` it writes to ``runs/<name>/<UTC time>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Run(
        version=args.version,
        data_dir=args.data,
        out_dir=args.out or Path("runs") / name / stamp,
        command=command_line(module, argv),
        config=args.config,
    )


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces a run (``argv`` None: this process's arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in args)])


def versions() -> dict[str, str]:
    """The versions of Python and the libraries that shape a model."""
    import keras
    import numpy as np
    import pydicom
    import sklearn
    import tensorflow as tf

    import dicom_node

    return {
        "python": platform.python_version(),
        "tensorflow": str(tf.__version__),
        "keras": str(keras.__version__),
        "numpy": np.__version__,
        "pydicom": str(pydicom.__version__),
        "scikit-learn": str(sklearn.__version__),
        "dicom-node": getattr(dicom_node, "__version__", "unknown"),
    }


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine() -> str:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "GPU"
    return f"{platform.machine()}, {cpu_count()} CPU cores, no GPU"


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)

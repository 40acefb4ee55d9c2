"""Logging setup: one line per event, no patient data.

Our own log lines never contain patient names or IDs (only UIDs, AE titles, counts).
pynetdicom's debug output can dump whole datasets, so it (and highdicom's chatter) is kept at
WARNING unless the admin sets ``log_patient_data`` together with ``log_level = DEBUG``.
"""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "INFO", allow_patient_data: bool = False) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    noisy = "DEBUG" if (allow_patient_data and level.upper() == "DEBUG") else "WARNING"
    for name in ("pynetdicom", "highdicom", "apscheduler", "tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(noisy)

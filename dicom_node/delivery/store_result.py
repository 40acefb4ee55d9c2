"""What one attempt to store a result returned, whatever carried it (C-STORE or STOW-RS)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pynetdicom.status import code_to_category

from dicom_node.config import PacsAddress


@dataclass(frozen=True)
class StoreResult:
    """Outcome for one instance: ``status`` None when no response came (connection failed)."""

    status: int | None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and code_to_category(self.status) in {"Success", "Warning"}


class StoreTransport(Protocol):
    def send(self, address: PacsAddress, files: Sequence[Path]) -> list[StoreResult]: ...

"""Sending results by STOW-RS (PS3.18 10.5) instead of C-STORE, with ``dicomweb-client``.

One POST per batch (the batch of one job's results to one destination, as one association is
for C-STORE).  The response's Referenced SOP Sequence and Failed SOP Sequence give a status
per instance, so retries and dead-lettering work exactly as for C-STORE: ``ResultSender``
does not know which protocol carried the files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

from dicom_node.config import DicomWebAddress
from dicom_node.delivery.store_result import StoreResult
from dicom_node.errors import DicomStatus

log = logging.getLogger(__name__)
# dicomweb-client's retry wrapper logs every failed request as a warning with a traceback, even
# with its retries off; the sender logs each failed attempt once, in its own words.
logging.getLogger("retrying").setLevel(logging.ERROR)

# PS3.18 10.5.3 Table 10.5.3-1: Warning Reason / Failure Reason carry DICOM status codes.
_PROCESSING_FAILURE = 0x0110


class StowClient:
    """STOW-RS user agent; retries are ``ResultSender``'s, not the library's."""

    def __init__(self, timeout_seconds: float = 30.0) -> None:
        self._timeout = timeout_seconds

    def send(self, address: DicomWebAddress, files: Sequence[Path]) -> list[StoreResult]:
        datasets: list[Dataset] = []
        results: dict[int, StoreResult] = {}
        for index, path in enumerate(files):
            try:
                datasets.append(pydicom.dcmread(path))
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                results[index] = StoreResult(None, f"cannot read result file: {exc}")
        sent = [i for i in range(len(files)) if i not in results]
        if sent:
            answers = self._post(address, datasets)
            for index, dataset in zip(sent, datasets, strict=True):
                results[index] = answers(str(dataset.SOPInstanceUID))
        return [results[i] for i in range(len(files))]

    def _post(self, address: DicomWebAddress, datasets: list[Dataset]) -> _Answers:
        client = DICOMwebClient(address.url, timeout=self._timeout)
        client.set_http_retry_params(retry=False)
        try:
            response = client.store_instances(datasets)
        except requests.HTTPError as exc:
            # 409 (all failed) and 4xx/5xx: the body may still say which instance failed why.
            reply = exc.response
            code = reply.status_code if reply is not None else None
            return _Answers(_response_dataset(reply), f"STOW-RS answered HTTP {code}")
        except requests.RequestException as exc:
            return _Answers(None, f"STOW-RS request failed ({type(exc).__name__})")
        return _Answers(response, "not in the STOW-RS response")


class _Answers:
    """Per-instance outcome from a STOW-RS response data set."""

    def __init__(self, response: Dataset | None, otherwise: str) -> None:
        self._otherwise = otherwise
        self._stored: dict[str, int] = {}
        self._failed: dict[str, int] = {}
        for item in getattr(response, "ReferencedSOPSequence", None) or []:
            warning = item.get("WarningReason")
            self._stored[str(item.ReferencedSOPInstanceUID)] = int(warning or DicomStatus.SUCCESS)
        for item in getattr(response, "FailedSOPSequence", None) or []:
            reason = item.get("FailureReason")
            self._failed[str(item.ReferencedSOPInstanceUID)] = int(reason or _PROCESSING_FAILURE)

    def __call__(self, sop_instance_uid: str) -> StoreResult:
        if sop_instance_uid in self._stored:
            return StoreResult(self._stored[sop_instance_uid])
        if sop_instance_uid in self._failed:
            reason = self._failed[sop_instance_uid]
            return StoreResult(reason, f"STOW-RS failed with Failure Reason 0x{reason:04X}")
        return StoreResult(None, self._otherwise)


def _response_dataset(reply: requests.Response | None) -> Dataset | None:
    if reply is None or "json" not in reply.headers.get("Content-Type", ""):
        return None
    try:
        return Dataset.from_json(reply.json())
    except (ValueError, TypeError, json.JSONDecodeError):
        return None

"""C-STORE transport for results: one association per batch, offering only the presentation
contexts the files need; over DICOM TLS when given a client context.  Success and warning
statuses count as delivered (PS3.4 B.2.3: a warning means stored).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from dicom_node.config import PacsAddress
from dicom_node.delivery.store_result import StoreResult
from dicom_node.errors import SendError


class StoreClient:
    """C-STORE SCU over pynetdicom; over DICOM TLS when given a client context."""

    def __init__(
        self,
        calling_ae: str,
        timeout_seconds: float = 30.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._calling_ae = calling_ae
        self._timeout = timeout_seconds
        self.tls_context = tls_context

    def send(self, address: PacsAddress, files: Sequence[Path]) -> list[StoreResult]:
        datasets: list[Dataset | None] = []
        results: list[StoreResult | None] = []
        for path in files:
            try:
                datasets.append(pydicom.dcmread(path))
                results.append(None)
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                datasets.append(None)
                results.append(StoreResult(None, f"cannot read result file: {exc}"))
        ae = AE(ae_title=self._calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self._timeout
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets if ds is not None}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        try:
            assoc = _associate(ae, address, self.tls_context)
        except SendError as exc:
            return [r or StoreResult(None, str(exc)) for r in results]
        try:
            for index, dataset in enumerate(datasets):
                if dataset is None:
                    continue
                response = assoc.send_c_store(dataset)
                status = getattr(response, "Status", None)
                if status is None:
                    results[index] = StoreResult(None, "no C-STORE response (aborted or timed out)")
                else:
                    ok = code_to_category(int(status)) in {"Success", "Warning"}
                    error = None if ok else f"C-STORE failed with status 0x{int(status):04X}"
                    results[index] = StoreResult(int(status), error)
        finally:
            if assoc.is_established:
                assoc.release()
        return [r or StoreResult(None, "association ended early") for r in results]


def _associate(ae: AE, address: PacsAddress, tls: ssl.SSLContext | None = None) -> Association:
    # The host doubles as the TLS server name: the PACS certificate must name it.
    tls_args = (tls, address.host) if tls is not None else None
    assoc = ae.associate(address.host, address.port, ae_title=address.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "association failed"
        raise SendError(f"{reason} by {address}")
    return assoc

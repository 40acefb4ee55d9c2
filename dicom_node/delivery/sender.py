"""Sending results to the PACS with retries, then dead-letter.

``ResultSender`` owns the retry policy and the job-log updates; the transports are the I/O seam
(``StoreTransport``): ``cstore_client.StoreClient`` (C-STORE) and ``stow_client.StowClient``
(STOW-RS).  Success and warning statuses count as delivered (PS3.4 B.2.3: a warning means stored).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path
from typing import Protocol

import pydicom

from dicom_node.admin.audit import AuditLog
from dicom_node.admin.metrics import Metrics
from dicom_node.config import DicomWebAddress, parse_destination
from dicom_node.delivery.cstore_client import StoreClient
from dicom_node.delivery.store_result import StoreResult, StoreTransport
from dicom_node.delivery.stow_client import StowClient
from dicom_node.joblog import DeliveryLog
from dicom_node.joblog.records import DueDelivery
from dicom_node.joblog.schema import JobState, utcnow
from dicom_node.tls import ClientTlsSettings, client_context

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0


class SenderSettings(ClientTlsSettings, Protocol):
    """What the sender reads of the configuration (``config.Settings`` has it)."""

    @property
    def ae_title(self) -> str: ...
    @property
    def network_timeout_seconds(self) -> float: ...
    @property
    def pacs_tls(self) -> bool: ...
    @property
    def send_max_attempts(self) -> int: ...
    @property
    def send_backoff_seconds(self) -> float: ...
    @property
    def send_backoff_max_seconds(self) -> float: ...
    @property
    def shared_joblog(self) -> bool: ...


class ResultSender:
    """Background thread that delivers pending results, with exponential backoff."""

    def __init__(
        self,
        settings: SenderSettings,
        joblog: DeliveryLog,
        metrics: Metrics,
        transport: StoreTransport | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self._settings = settings
        self._joblog = joblog
        self._metrics = metrics
        # Built here so a bad certificate stops the start (ConfigError), not the first send.
        self._tls = client_context(settings) if settings.pacs_tls else None
        self._transport = transport or StoreClient(
            settings.ae_title, settings.network_timeout_seconds, self._tls
        )
        self._stow = StowClient(settings.network_timeout_seconds)
        self._audit = audit
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        self._wake.set()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.send_due()
            except Exception:
                log.exception("sending results failed")
                worked = False
            if not worked:
                self._wake.wait(POLL_SECONDS)
                self._wake.clear()

    def backoff(self, attempts: int) -> float:
        """Seconds before retry number ``attempts`` + 1."""
        base = self._settings.send_backoff_seconds * 2 ** max(attempts - 1, 0)
        return float(min(base, self._settings.send_backoff_max_seconds))

    def send_due(self) -> bool:
        """One round: send the due deliveries of the oldest due job; False if none were due."""
        # Long enough for one association per destination even at its network timeout.
        hold = 3 * self._settings.network_timeout_seconds if self._settings.shared_joblog else None
        deliveries = self._joblog.due(hold_seconds=hold)
        if not deliveries:
            return False
        by_destination: dict[str, list[DueDelivery]] = {}
        for delivery in deliveries:
            by_destination.setdefault(delivery.destination, []).append(delivery)
        for destination, batch in by_destination.items():
            address = parse_destination(destination)
            files = [Path(d.path) for d in batch]
            if isinstance(address, DicomWebAddress):
                results = self._stow.send(address, files)
            else:
                results = self._transport.send(address, files)
            for delivery, result in zip(batch, results, strict=True):
                self._record(delivery, result, destination)
            self._audit_batch(batch, results, destination)
        for job_id in sorted({d.job_id for d in deliveries}):
            job = self._joblog.settle(job_id)
            if job.finished_at is not None:
                log.info("job %d %s", job_id, job.state)
                if job.state == JobState.DONE:
                    seconds = (job.finished_at - job.received_at).total_seconds()
                    self._metrics.turnaround_seconds.labels(pipeline=job.pipeline or "").observe(
                        seconds
                    )
        return True

    def _audit_batch(
        self, batch: list[DueDelivery], results: list[StoreResult], destination: str
    ) -> None:
        """One audit line per job and attempt: what was sent where, with which statuses."""
        if self._audit is None:
            return
        by_job: dict[int, list[tuple[DueDelivery, StoreResult]]] = {}
        for delivery, result in zip(batch, results, strict=True):
            by_job.setdefault(delivery.job_id, []).append((delivery, result))
        for job_id, pairs in by_job.items():
            failed = [r for _, r in pairs if not r.delivered]
            self._audit.delivery(
                job_id=job_id,
                study_uid=_study_uid(Path(pairs[0][0].path)),
                destination=destination,
                tls=self._tls is not None,
                sop_uids=[d.sop_instance_uid for d, _ in pairs],
                statuses=[r.status for _, r in pairs],
                outcome="failed" if failed else "sent",
                error=failed[0].error if failed else None,
            )

    def _record(self, delivery: DueDelivery, result: StoreResult, destination: str) -> None:
        if result.delivered:
            assert result.status is not None
            self._joblog.sent(delivery.id, result.status)
            self._metrics.deliveries.labels(outcome="sent").inc()
            return
        attempts = delivery.attempts + 1
        error = result.error or "unknown error"
        if attempts >= self._settings.send_max_attempts:
            retry_at = None
            self._metrics.deliveries.labels(outcome="dead").inc()
            log.error(
                "giving up on %s to %s after %d attempts: %s",
                delivery.sop_instance_uid,
                destination,
                attempts,
                error,
            )
        else:
            retry_at = utcnow() + dt.timedelta(seconds=self.backoff(attempts))
            self._metrics.deliveries.labels(outcome="retry").inc()
            log.warning(
                "sending %s to %s failed (attempt %d/%d, retry in %.1f s): %s",
                delivery.sop_instance_uid,
                destination,
                attempts,
                self._settings.send_max_attempts,
                self.backoff(attempts),
                error,
            )
        self._joblog.failed(delivery.id, result.status, error, retry_at)


def _study_uid(path: Path) -> str | None:
    """The result's Study Instance UID for the audit trail (header only; None if unreadable)."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
    except (OSError, pydicom.errors.InvalidDicomError):
        return None
    value = dataset.get("StudyInstanceUID")
    return str(value) if value else None

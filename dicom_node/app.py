"""Wiring: builds the node's parts from ``Settings`` and runs them until asked to stop.

Start order follows the data: job log (with crash recovery), sender, worker, assembler (which
re-arms timers of studies still gathering), admin HTTP, and last the SCP, so nothing is
accepted before it can be filed.

A process runs the parts of its ``roles`` (all four by default): ``intake`` (the SCP and the
STOW-RS server), ``assembly`` (study completion), ``worker`` (the models), ``sender`` (result
delivery).  Processes with different roles share the job log (PostgreSQL) and the data
directory (a shared filesystem).  A node alone on its SQLite file treats whatever it finds
running at start as its own, interrupted; nodes sharing a job log rely on the leases.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from dicom_node import __version__
from dicom_node.admin.audit import AuditLog
from dicom_node.admin.http import AdminServer
from dicom_node.admin.metrics import Metrics
from dicom_node.assembly import StudyAssembler
from dicom_node.config import Settings
from dicom_node.delivery.sender import ResultSender
from dicom_node.delivery.store_result import StoreTransport
from dicom_node.errors import ConfigError
from dicom_node.intake.admission import Gate
from dicom_node.intake.filing import Intake, refile_unrecorded
from dicom_node.intake.scp import start_scp, stow_accepted
from dicom_node.intake.stow_server import StowServer
from dicom_node.joblog import JobLog, migrate
from dicom_node.registry import PipelineRegistry
from dicom_node.storage import free_disk_mb, remove_partial_files
from dicom_node.web import admin_policy, dicomweb_policy
from dicom_node.worker import Worker

log = logging.getLogger(__name__)


class Node:
    def __init__(
        self,
        settings: Settings,
        pipelines: PipelineRegistry | None = None,
        transport: StoreTransport | None = None,
    ) -> None:
        self.settings = settings
        _prepare_data_dir(settings.data_dir)
        self.joblog = JobLog.open(settings.joblog_url)
        self.metrics = Metrics()
        self.metrics.watch_job_states(self.joblog.admin.state_counts)
        self.pipelines = pipelines or PipelineRegistry(settings.models_dir)
        self.audit = AuditLog.for_settings(settings)
        # TLS files and ae_hosts names are checked here, before any thread starts.
        self.gate = Gate.from_settings(settings, self.audit)
        self.sender = ResultSender(
            settings, self.joblog.deliveries, self.metrics, transport, self.audit
        )
        self.worker = Worker(
            settings, self.joblog.queue, self.pipelines, self.metrics, self.sender.wake
        )
        self.assembler = StudyAssembler(settings, self.joblog.assembly, self.worker.wake)
        # The HTTP ports' TLS contexts and tokens too; a port off loopback without TLS and
        # authentication stops the start here (unless allow_insecure_http).
        stow_on = settings.has_role("intake") and settings.dicomweb_port is not None
        self._stow_policy = dicomweb_policy(settings) if stow_on else None
        self.admin = AdminServer(
            settings.http_host,
            settings.http_port,
            self.metrics,
            self.health,
            admin_policy(settings),
        )
        self._scp: Any = None
        self.stow: StowServer | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        settings = self.settings
        shared = settings.shared_joblog
        # Other live nodes may be writing to shared storage: only old partial files are left.
        leftovers = remove_partial_files(settings.data_dir, PARTIAL_FILE_AGE if shared else 0.0)
        if leftovers:
            log.warning("removed %d partial file(s) left by an interrupted write", leftovers)
        if settings.has_role("intake"):
            restored = refile_unrecorded(settings, self.joblog.intake)
            if restored:
                log.warning("recorded %d inbox file(s) the job log had lost", restored)
        if settings.has_role("worker"):
            recovered = self.joblog.queue.reclaim_expired(
                settings.job_max_attempts, everyone=not shared
            )
            self.worker.take_back(recovered)
            if recovered:
                log.warning("took back %d job(s) whose worker was lost", len(recovered))
        log.info(
            "roles %s; job log %s", ",".join(settings.roles), migrate.describe(self.joblog.engine)
        )
        if settings.has_role("intake") and not settings.allowed_aes:
            log.warning(
                "allowed_aes is empty: any calling AE may connect and store (demo default); "
                "production needs ALLOWED_AES (DICOM_NODE_ALLOWED_AES=PACS1,...)"
            )
        log.info("audit trail: %s", self.audit.path)
        if settings.pacs is None and settings.has_role("worker"):
            log.warning(
                "no PACS configured: results are written to %s only", self.settings.outbox_dir
            )
        if settings.has_role("sender"):
            self.sender.start()
        if settings.has_role("worker"):
            self.worker.start()
        else:
            self.worker.models_ready.set()  # no models in this process
        if settings.has_role("assembly"):
            self.assembler.start()
        self.admin.start()
        if settings.has_role("intake"):
            assembly = settings.has_role("assembly")
            intake = Intake(
                settings,
                self.joblog.intake,
                self.metrics,
                self.assembler.instance_received if assembly else _nothing,
                self.audit,
                self.assembler.association_ended if assembly else _nothing,
            )
            self._scp = start_scp(settings, intake, self.gate)
            if self._stow_policy is not None:
                self.stow = StowServer(intake, stow_accepted(), self.audit, self._stow_policy)
                self.stow.start()
        log.info("dicom-node %s ready (research use only, not for diagnosis)", __version__)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("stopping")
        if self.stow is not None:
            self.stow.stop()
        if self._scp is not None:
            self._scp.shutdown()
        self.assembler.stop()
        self.worker.stop()
        self.sender.stop()
        self.admin.stop()
        self.joblog.close()
        self.audit.close()

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` reports; ``degraded`` whenever the node would refuse stores."""
        counts = self.joblog.admin.state_counts()
        has = self.settings.has_role
        worker_ok = self.worker.alive() or not has("worker")
        sender_ok = self.sender.alive() or not has("sender")
        threads_ok = worker_ok and sender_ok
        free_mb = free_disk_mb(self.settings.data_dir)
        disk_ok = free_mb >= self.settings.min_free_disk_mb
        joblog_ok = self.joblog.writable()
        problems = [
            *([] if threads_ok else ["a worker or the sender has stopped"]),
            *(
                []
                if self._scp is not None or not has("intake")
                else ["the DICOM listener is not running"]
            ),
            *(
                []
                if disk_ok
                else [f"free disk {free_mb:.0f} MB below min_free_disk_mb: stores are refused"]
            ),
            *([] if joblog_ok else ["the job log is locked: stores are refused"]),
        ]
        return {
            "status": "ok" if not problems else "degraded",
            "problems": problems,
            "version": __version__,
            "ae_title": self.settings.ae_title,
            "dicom_port": self.settings.port if has("intake") else None,
            "roles": list(self.settings.roles),
            "worker": _part_state(has("worker"), self.worker.alive()),
            "worker_name": self.worker.name if has("worker") else None,
            "sender": _part_state(has("sender"), self.sender.alive()),
            "models_loaded": self.pipelines.loaded(),
            "models_ready": self.worker.models_ready.is_set(),
            "device": self.pipelines.device,
            "jobs": counts,
        }

    def run_forever(self) -> None:
        """Start, then block until SIGINT/SIGTERM; always stop cleanly."""
        stop = threading.Event()

        def _signal(signum: int, _frame: object) -> None:
            log.info("received signal %d", signum)
            stop.set()

        signal.signal(signal.SIGINT, _signal)
        signal.signal(signal.SIGTERM, _signal)
        self.start()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            self.stop()


# A partial file this old on shared storage is no live node's write in progress.
PARTIAL_FILE_AGE = 3600.0


def _nothing(*_args: Any) -> None:
    """An intake node without the assembly role: other nodes complete its studies."""


def _part_state(has_role: bool, alive: bool) -> str:
    if not has_role:
        return "off"
    return "running" if alive else "stopped"


def _prepare_data_dir(path: Path) -> None:
    try:
        for sub in ("", "inbox", "outbox", "quarantine"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"data_dir (DICOM_NODE_DATA_DIR): {path} is not writable: {exc}") from exc

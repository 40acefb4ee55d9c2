"""The worker: claims queued jobs, runs their pipeline, writes outputs, hands them to the sender.

A job arrives routed (its pipeline and the instances it takes were decided once, at study
completion); the worker reads those instances, runs the registry's pipeline on them, then the
output builder paired with it, and writes the outputs to the outbox.  It runs in its own
threads, separate from the SCP's association threads, and polls the job log (so a ``requeue``
or a job queued by another node is picked up) besides being woken directly.

Claims carry this process's worker name and a lease that a heartbeat thread renews; the poll
also returns jobs whose worker (in any process) let its lease run out.

Errors become job states here: ``NotAnalysable`` -> ``ignored``, any other error -> ``failed``,
each with a one-line reason.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydicom import Dataset

from dicom_node import __version__
from dicom_node.admin.metrics import Metrics
from dicom_node.config import Destination
from dicom_node.domain import OutputContext
from dicom_node.errors import InstanceRejected, NotAnalysable, PipelineError
from dicom_node.intake import codestream
from dicom_node.intake.inflate import InflateLimitExceeded, read_part10
from dicom_node.joblog import WorkQueue
from dicom_node.joblog.records import ClaimedJob, Reclaimed, ResultFile
from dicom_node.logs import clean, one_line
from dicom_node.registry import PipelineRegistry
from dicom_node.storage import atomic_write

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
MIB = 1024 * 1024
# The job summary of a study analysed before its sender finished (``ClaimedJob.unfinished``).
UNFINISHED_SUMMARY = "may be incomplete: the sender ended without release"


def default_worker_name() -> str:
    """``host:pid``: unique among the processes sharing a job log."""
    return f"{socket.gethostname()}:{os.getpid()}"[:64]


class WorkerSettings(Protocol):
    """What a worker reads of the configuration (``config.Settings`` has it)."""

    @property
    def worker_name(self) -> str | None: ...
    @property
    def worker_lease_seconds(self) -> float: ...
    @property
    def worker_threads(self) -> int: ...
    @property
    def job_max_attempts(self) -> int: ...
    @property
    def preload_models(self) -> bool: ...
    @property
    def pacs(self) -> Destination | None: ...
    @property
    def outbox_dir(self) -> Path: ...
    @property
    def fsync(self) -> bool: ...
    @property
    def max_instance_mb(self) -> int: ...
    @property
    def max_decoded_mb(self) -> int: ...


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        joblog: WorkQueue,
        pipelines: PipelineRegistry,
        metrics: Metrics,
        on_outputs: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._joblog = joblog
        self._pipelines = pipelines
        self._metrics = metrics
        self._on_outputs = on_outputs
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.models_ready = threading.Event()
        self.name = settings.worker_name or default_worker_name()
        self._lease = settings.worker_lease_seconds

    def start(self) -> None:
        for index in range(self._settings.worker_threads):
            thread = threading.Thread(target=self._loop, name=f"worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if not self._threads:
            self.models_ready.set()  # nothing to load in an intake-only node
            log.warning("worker_threads=0: intake only, queued jobs wait for a worker")
            return
        heartbeat = threading.Thread(target=self._heartbeat, name="worker-heartbeat", daemon=True)
        heartbeat.start()
        self._threads.append(heartbeat)
        log.info("worker %s started (lease %g s)", self.name, self._lease)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def wake(self) -> None:
        self._wake.set()

    def alive(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    def _loop(self) -> None:
        if self._settings.preload_models and threading.current_thread().name == "worker-0":
            self._preload()
        self.models_ready.set()
        while not self._stop.is_set():
            try:
                self.take_back(self._joblog.reclaim_expired(self._settings.job_max_attempts))
                job = self._joblog.claim_next(self.name, self._lease)
            except Exception:
                log.exception("claiming a job failed")
                job = None
            if job is None:
                self._wake.wait(POLL_SECONDS)
                self._wake.clear()
                continue
            self.process(job)

    def take_back(self, reclaimed: Sequence[Reclaimed]) -> None:
        for job in reclaimed:
            self._metrics.jobs_taken_back.labels(outcome=job.state).inc()

    def _heartbeat(self) -> None:
        """Renew this worker's leases three times per lease (a missed beat is not fatal)."""
        while not self._stop.wait(self._lease / 3):
            try:
                self._joblog.heartbeat(self.name, self._lease)
            except Exception:
                log.exception("renewing the job leases failed")

    def _preload(self) -> None:
        for name in self._pipelines.names():
            try:
                self._pipelines.warm_up(name)
            except Exception as exc:
                log.error("could not load the %s pipeline: %s", name, exc)

    def process(self, job: ClaimedJob) -> None:
        """Run one claimed job to ``sending``/``done``, ``ignored`` or ``failed``; never raises.

        A failure's one-line reason names the step (and, from the pipelines, the instance and
        attribute); values of the sources' patient and study modules are cut out of it.
        """
        started = time.monotonic()
        study_uid = job.study_instance_uid
        sources: list[Dataset] = []
        step = "reading the sources"
        try:
            if job.pipeline is None or not job.sources:
                raise PipelineError("the job was queued without a routed pipeline and instances")
            sources = [read_source(Path(i.path), self._settings) for i in job.sources]
            step = "loading the model"
            loaded = self._pipelines.get(job.pipeline)
            step = "analysis"
            finding = loaded.pipeline.run(sources)
            step = "building the outputs"
            context = OutputContext(
                result_version=job.version, software_version=__version__, unfinished=job.unfinished
            )
            datasets = loaded.build_outputs(finding, sources, context)
            step = "writing the outputs"
            outputs = [self._write_output(study_uid, ds) for ds in datasets]
            summary = json.dumps(
                _summary(loaded.pipeline.summarise(finding), job), separators=(",", ":")
            )
            destination = str(self._settings.pacs) if self._settings.pacs else None
            info = loaded.pipeline.model_info
            recorded = self._joblog.processed(
                job.id, info.name, info.version, summary, outputs, destination, job.worker
            )
        except NotAnalysable as exc:
            reason = redact(str(exc), sources)
            log.info("job %d ignored: %s", job.id, reason)
            self._claim_lost(job, self._joblog.ignore(job.id, reason, job.worker))
            return
        except PipelineError as exc:
            self._fail(job, redact(str(exc), sources))
            return
        except Exception as exc:
            # The exception's text may quote attribute values: only its kind goes in the log.
            reason = f"{step} failed ({type(exc).__name__})"
            log.debug("job %d failed", job.id, exc_info=True)
            self._fail(job, reason)
            return
        if not recorded:
            self._claim_lost(job, recorded)
            for output in outputs:  # never delivered: the new claimant writes its own
                Path(output.path).unlink(missing_ok=True)
            return
        elapsed = time.monotonic() - started
        self._metrics.processing_seconds.labels(pipeline=job.pipeline).observe(elapsed)
        log.info(
            "job %d (%s, study %s) processed in %.2f s: %d output(s) %s",
            job.id,
            job.pipeline,
            study_uid,
            elapsed,
            len(outputs),
            summary,
        )
        self._on_outputs()

    def _fail(self, job: ClaimedJob, error: str) -> None:
        log.warning("job %d failed: %s", job.id, error)
        self._claim_lost(job, self._joblog.fail(job.id, error, job.worker))

    @staticmethod
    def _claim_lost(job: ClaimedJob, recorded: bool) -> None:
        if not recorded:
            # Stalled past the lease: another worker has the job now, its outcome counts.
            log.warning("job %d: claim lost before the outcome was recorded; discarded", job.id)

    def _write_output(self, study_uid: str, dataset: Dataset) -> ResultFile:
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        path = self._settings.outbox_dir / study_uid / f"{dataset.SOPInstanceUID}.dcm"
        atomic_write(path, buffer.getbuffer(), fsync=self._settings.fsync)
        return ResultFile(str(dataset.SOPInstanceUID), str(dataset.SOPClassUID), str(path))


# Attributes of the Patient and General Study modules (and their usual companions) whose values
# must never reach a job error or the log.
PATIENT_ATTRIBUTES: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientComments",
    "EthnicGroup",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "InstitutionAddress",
    "StudyID",
    "RequestingPhysician",
)


def redact(text: str, sources: Sequence[Dataset], limit: int = 500) -> str:
    """``text`` on one line, bounded, with values of the sources' patient attributes cut out."""
    values: set[str] = set()
    for ds in sources:
        for keyword in PATIENT_ATTRIBUTES:
            try:
                value = ds.get(keyword)
            except Exception:
                continue
            if value is None:
                continue
            text_value = str(value).strip()
            parts = text_value.split("^") if "Name" in keyword else []  # PN components
            values.update(p.strip() for p in (text_value, *parts) if len(p.strip()) >= 3)
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "<redacted>")
    return clean(one_line(text, limit), limit + 20)


def _summary(summary: dict[str, Any], job: ClaimedJob) -> dict[str, Any]:
    """The pipeline's summary, saying first when the study may be incomplete."""
    if not job.unfinished:
        return summary
    return {"unfinished": UNFINISHED_SUMMARY, **summary}


class SourceLimits(Protocol):
    @property
    def max_instance_mb(self) -> int: ...
    @property
    def max_decoded_mb(self) -> int: ...


def read_source(path: Path, limits: SourceLimits) -> Dataset:
    """One source instance, read whole and checked before any decoder runs.

    Intake checked it already, but an inbox file may predate a check or a lowered limit: a
    deflated data set inflates to at most ``max_instance_mb``, and the pixels must fit
    ``max_decoded_mb`` with every compressed frame's own header agreeing with the data set
    (``intake.codestream``); otherwise the job fails naming the instance, nothing decoded.
    """
    try:
        dataset = read_part10(path, limits.max_instance_mb * MIB)
    except FileNotFoundError:
        raise PipelineError(f"source file missing from the inbox: {path.name}") from None
    except InflateLimitExceeded:
        raise PipelineError(
            f"instance {path.stem}: the deflated data set inflates to more than "
            f"max_instance_mb={limits.max_instance_mb}; not read"
        ) from None
    except Exception as exc:  # accepted at intake, so this is damage on disk
        raise PipelineError(
            f"instance {path.stem}: the stored file cannot be read ({type(exc).__name__})"
        ) from None
    if "PixelData" in dataset:
        syntax = str(dataset.file_meta.get("TransferSyntaxUID", ""))
        try:
            codestream.check_dataset(dataset, syntax, limits.max_decoded_mb)
        except InstanceRejected as refused:
            raise PipelineError(f"instance {path.stem}: {refused.reason}; not decoded") from None
    return dataset

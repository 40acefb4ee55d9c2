"""The worker: claims queued jobs, runs their pipeline, writes outputs, hands them to the sender.

It runs in its own threads, separate from the SCP's association threads, and polls the job
log (so a ``requeue`` from another process is picked up) besides being woken directly.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom import Dataset

from dicom_node import __version__
from dicom_node.config import Settings
from dicom_node.db import Job, JobLog
from dicom_node.metrics import Metrics
from dicom_node.pipelines.base import NotAnalysable, OutputContext, PipelineError
from dicom_node.pipelines.registry import PipelineRegistry
from dicom_node.routing import route
from dicom_node.storage import atomic_write

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0


class Worker:
    def __init__(
        self,
        settings: Settings,
        joblog: JobLog,
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

    def start(self) -> None:
        for index in range(self._settings.worker_threads):
            thread = threading.Thread(target=self._loop, name=f"worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if not self._threads:
            self.models_ready.set()  # nothing to load in an intake-only node
            log.warning("worker_threads=0: intake only, queued jobs wait for a worker")

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
                job = self._joblog.claim_next_job()
            except Exception:
                log.exception("claiming a job failed")
                job = None
            if job is None:
                self._wake.wait(POLL_SECONDS)
                self._wake.clear()
                continue
            self.process(job)

    def _preload(self) -> None:
        for name in self._pipelines.names():
            try:
                self._pipelines.get(name).warm_up()
            except Exception as exc:
                log.error("could not load the %s pipeline: %s", name, exc)

    def process(self, job: Job) -> None:
        """Run one claimed job to ``sending``/``done`` or ``failed``; never raises."""
        started = time.monotonic()
        study_uid = job.study.study_instance_uid
        try:
            instances = self._joblog.study_instances(job.id)
            decision = route(instances)
            if decision.pipeline is None:
                raise PipelineError(decision.reason)
            sources = [_read_source(Path(instances[i].path)) for i in decision.instance_indexes]
            pipeline = self._pipelines.get(decision.pipeline)
            finding = pipeline.run(sources)
            context = OutputContext(result_version=job.version, software_version=__version__)
            datasets = pipeline.build_outputs(finding, sources, context)
            outputs = [self._write_output(study_uid, ds) for ds in datasets]
            summary = json.dumps(pipeline.summarise(finding), separators=(",", ":"))
            destination = str(self._settings.pacs) if self._settings.pacs else None
            self._joblog.processed(
                job.id,
                pipeline.model_info.name,
                pipeline.model_info.version,
                summary,
                outputs,
                destination,
            )
        except NotAnalysable as exc:
            log.info("job %d ignored: %s", job.id, exc)
            self._joblog.ignore_job(job.id, _one_line(str(exc)))
            return
        except PipelineError as exc:
            self._fail(job, str(exc))
            return
        except Exception as exc:
            log.exception("job %d failed", job.id)
            self._fail(job, f"{type(exc).__name__}: {exc}")
            return
        elapsed = time.monotonic() - started
        self._metrics.processing_seconds.labels(pipeline=decision.pipeline).observe(elapsed)
        log.info(
            "job %d (%s, study %s) processed in %.2f s: %d output(s) %s",
            job.id,
            decision.pipeline,
            study_uid,
            elapsed,
            len(outputs),
            summary,
        )
        self._on_outputs()

    def _fail(self, job: Job, error: str) -> None:
        error = _one_line(error)
        log.warning("job %d failed: %s", job.id, error)
        self._joblog.fail_job(job.id, error)

    def _write_output(self, study_uid: str, dataset: Dataset) -> tuple[str, str, str]:
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        path = self._settings.outbox_dir / study_uid / f"{dataset.SOPInstanceUID}.dcm"
        atomic_write(path, buffer.getbuffer(), fsync=self._settings.fsync)
        return str(dataset.SOPInstanceUID), str(dataset.SOPClassUID), str(path)


def _one_line(text: str, limit: int = 500) -> str:
    """One line for the job log (decoder plugins report one line each), of bounded length."""
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_source(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except FileNotFoundError:
        raise PipelineError(f"source file missing from the inbox: {path.name}") from None

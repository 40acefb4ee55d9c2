"""Plain records the job log hands out and takes in: no ORM object leaves its session."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class InstanceRecord:
    """What the SCP learned about one stored instance (no patient data)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    body_part: str | None
    image_type: str | None
    view_position: str | None
    description: str | None
    calling_ae: str
    path: str
    size_bytes: int
    # A one-way key of the patient identity (PatientID and its issuer), never the values: one
    # study must hold one patient (``filing.patient_key``).  Stored per study, not per instance.
    patient_key: str = field(default="", kw_only=True)


# The columns of ``schema.Instance`` that an ``InstanceRecord`` carries (all but the study UID).
INSTANCE_FIELDS: tuple[str, ...] = (
    "series_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "transfer_syntax_uid",
    "modality",
    "body_part",
    "image_type",
    "view_position",
    "description",
    "calling_ae",
    "path",
    "size_bytes",
)


@dataclass(frozen=True)
class RecordOutcome:
    job_id: int
    study_instance_uid: str
    modality: str | None
    duplicate: bool
    # True while the job gathers instances: the quiet timer must be (re)armed.
    gathering: bool
    # A resend filed under another path (another series): the earlier file, to remove.
    replaced_path: str | None = None


@dataclass(frozen=True)
class StoredInstance(InstanceRecord):
    """One filed instance with its row id, as routing and the worker see it."""

    id: int


@dataclass(frozen=True)
class GatheringJob:
    """A job still receiving instances: when its quiet period may end."""

    job_id: int
    state: str
    modality: str | None
    last_instance_at: dt.datetime
    association_end: str | None = None  # ``schema.AssociationEnd``; None: not recorded


@dataclass(frozen=True)
class ClaimedJob:
    """A job the worker has claimed, with the instances routing chose for it."""

    id: int
    study_instance_uid: str
    version: int
    pipeline: str | None
    attempts: int
    sources: tuple[StoredInstance, ...]
    worker: str | None = None  # who holds the claim
    # Completed after the interrupted-study hold, its sender never having finished: the
    # outputs say the study may be incomplete.
    unfinished: bool = False


@dataclass(frozen=True)
class Reclaimed:
    """A running job whose worker was lost: back in the queue, or failed."""

    job_id: int
    state: str


@dataclass(frozen=True)
class ResultFile:
    """One output written to the outbox, to be delivered."""

    sop_instance_uid: str
    sop_class_uid: str
    path: str


@dataclass(frozen=True)
class DueDelivery:
    id: int
    job_id: int
    sop_instance_uid: str
    path: str
    destination: str
    attempts: int


@dataclass(frozen=True)
class SettledJob:
    """A job's state after a send round; ``finished_at`` is set once it is final."""

    job_id: int
    state: str
    pipeline: str | None
    received_at: dt.datetime
    finished_at: dt.datetime | None


@dataclass(frozen=True)
class JobRow:
    """One line of ``dicom-node jobs``: a job, or a rejected dataset."""

    job_id: int | None
    study_instance_uid: str | None
    version: int | None
    state: str
    pipeline: str | None
    modality: str | None
    instances: int
    error: str | None
    summary: str | None
    received_at: dt.datetime
    finished_at: dt.datetime | None
    updated_at: dt.datetime
    deliveries_sent: int = 0
    deliveries_total: int = 0
    queued_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    processed_at: dt.datetime | None = None
    attempts: int = 0
    source_count: int = 0  # instances routing chose for the job
    worker: str | None = None  # the worker that ran (or runs) the job

    def as_json(self) -> dict[str, Any]:
        def iso(value: dt.datetime | None) -> str | None:
            return value.isoformat(timespec="milliseconds") + "Z" if value else None

        return {
            "job_id": self.job_id,
            "study_instance_uid": self.study_instance_uid,
            "version": self.version,
            "state": self.state,
            "pipeline": self.pipeline,
            "modality": self.modality,
            "instances": self.instances,
            "error": self.error,
            "summary": _summary_object(self.summary),
            "received_at": iso(self.received_at),
            "queued_at": iso(self.queued_at),
            "started_at": iso(self.started_at),
            "processed_at": iso(self.processed_at),
            "finished_at": iso(self.finished_at),
            "updated_at": iso(self.updated_at),
            "deliveries_sent": self.deliveries_sent,
            "deliveries_total": self.deliveries_total,
            "attempts": self.attempts,
            "worker": self.worker,
        }


def _summary_object(summary: str | None) -> Any:
    """The job summary as the JSON object it is stored as (text that is not JSON as is)."""
    if not summary:
        return None
    try:
        return json.loads(summary)
    except ValueError:
        return summary

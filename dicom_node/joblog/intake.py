"""The job log as the C-STORE handler uses it: file an instance, record a refusal."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, select, update

from dicom_node.errors import DicomStatus, InstanceRejected
from dicom_node.joblog.records import INSTANCE_FIELDS, InstanceRecord, RecordOutcome
from dicom_node.joblog.schema import Instance, Job, JobState, Rejection, Store, Study, utcnow


class IntakeLog(Store):
    def record_instance(self, record: InstanceRecord) -> RecordOutcome:
        """File one received instance; open a new job version if the last one has moved on.

        A resent instance (same SOP Instance UID, same study) replaces the stored file but does
        not start a new analysis by itself.  A SOP Instance UID already filed in another study
        is refused: a UID names one instance, and taking it over would file one patient's
        image (and result) under another.  This runs on every C-STORE, so it uses Core
        statements in one short transaction rather than the ORM's unit of work.
        """
        now = utcnow()
        with self.engine.begin() as db:
            study_id = db.scalar(
                select(Study.id).where(Study.study_instance_uid == record.study_instance_uid)
            )
            if study_id is None:
                study_id = db.execute(
                    insert(Study).values(
                        study_instance_uid=record.study_instance_uid,
                        first_received_at=now,
                        last_received_at=now,
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
            else:
                db.execute(update(Study).where(Study.id == study_id).values(last_received_at=now))
            found = db.execute(
                select(Instance.id, Instance.study_id).where(
                    Instance.sop_instance_uid == record.sop_instance_uid
                )
            ).first()
            if found is not None and found.study_id != study_id:
                raise InstanceRejected(
                    DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    "SOP Instance UID is already filed in another study",
                )
            existing = found.id if found is not None else None
            duplicate = existing is not None
            if existing is not None:
                db.execute(
                    update(Instance)
                    .where(Instance.id == existing)
                    .values(
                        path=record.path,
                        size_bytes=record.size_bytes,
                        received_at=now,
                        transfer_syntax_uid=record.transfer_syntax_uid,
                    )
                )
            else:
                db.execute(
                    insert(Instance).values(study_id=study_id, received_at=now, **_fields(record))
                )
            job = db.execute(
                select(Job.id, Job.state, Job.version, Job.modality)
                .where(Job.study_id == study_id)
                .order_by(Job.version.desc())
                .limit(1)
            ).first()
            if job is None or (job.state != JobState.RECEIVED and not duplicate):
                job_id = db.execute(
                    insert(Job).values(
                        study_id=study_id,
                        version=(job.version + 1) if job else 1,
                        state=JobState.RECEIVED,
                        modality=record.modality,
                        instance_count=db.scalar(
                            select(func.count(Instance.id)).where(Instance.study_id == study_id)
                        ),
                        received_at=now,
                        last_instance_at=now,
                        updated_at=now,
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
                return RecordOutcome(
                    job_id, record.study_instance_uid, record.modality, duplicate, True
                )
            gathering = job.state == JobState.RECEIVED
            if gathering:
                db.execute(
                    update(Job)
                    .where(Job.id == job.id)
                    .values(
                        instance_count=Job.instance_count + (0 if duplicate else 1),
                        last_instance_at=now,
                        updated_at=now,
                    )
                )
            return RecordOutcome(
                job.id, record.study_instance_uid, job.modality, duplicate, gathering
            )

    def record_rejection(
        self,
        calling_ae: str,
        status: int,
        reason: str,
        study_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        sop_class_uid: str | None = None,
        quarantine_path: str | None = None,
    ) -> None:
        with self.session() as session:
            session.add(
                Rejection(
                    calling_ae=calling_ae,
                    status=int(status),
                    reason=reason,
                    study_instance_uid=study_instance_uid,
                    sop_instance_uid=sop_instance_uid,
                    sop_class_uid=sop_class_uid,
                    quarantine_path=quarantine_path,
                )
            )


def _fields(record: InstanceRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in INSTANCE_FIELDS}

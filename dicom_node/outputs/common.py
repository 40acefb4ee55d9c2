"""What every output object shares: UIDs, series identity, equipment, algorithm identity, and
the SR and Secondary Capture objects themselves (their content is each pipeline's own).

Result UIDs are derived (UUID-derived ``2.25.`` UIDs, PS3.5 B.2) from the source instances,
the model's name and version and the kind of object: re-running a job after a crash or a
``requeue`` produces the same UIDs, so the PACS keeps one copy; a late instance changes the
source set and so produces a new result version.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, TM

from dicom_node.domain import ModelInfo, OutputContext
from dicom_node.outputs.codes import ALGORITHM_FAMILY, PRIVATE_SCHEME_ITEM, REPORT_TITLE

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
# Outputs of a study analysed before its sender finished (``OutputContext.unfinished``): the SR's
# Completion Flag is PARTIAL with this description (LO: 64 characters at most), series
# descriptions say UNFINISHED, and pictures carry the notice burned in.
UNFINISHED_DESCRIPTION = "Study may be incomplete: the sender ended without release"
UNFINISHED_NOTICE = "UNFINISHED: the study may be incomplete (the sender did not finish)"

# Series numbers of our outputs, high so they sort after the acquisition's series.
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
SEG_SERIES_NUMBER = 9903


# Namespace of our name-based (RFC 4122 version 5) UUIDs.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/dicom-node/dicom-node")


def derive_uid(*parts: str) -> str:
    """A UID that depends only on ``parts``: ``2.25.`` + a name-based UUID (PS3.5 B.2).

    (pydicom's ``generate_uid(prefix=None, ...)`` ignores its entropy sources and returns a
    random UUID, so it cannot be used here.)
    """
    name = "\x1f".join(parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def source_key(sources: Iterable[Dataset]) -> str:
    """One string for a set of source instances (order-independent)."""
    return ",".join(sorted(str(ds.SOPInstanceUID) for ds in sources))


@dataclass(frozen=True)
class SeriesIdentity:
    series_instance_uid: str
    series_number: int
    series_description: str


def series_identity(
    kind: str, number: int, model: ModelInfo, sources: Sequence[Dataset], context: OutputContext
) -> SeriesIdentity:
    """Series UID from the sources and model; description carries the research notice."""
    uid = derive_uid("series", kind, model.name, model.version, source_key(sources))
    # A re-analysis with more instances: new series (new sources), saying what it supersedes.
    n = context.result_version
    version = f" v{n} replaces v{n - 1}" if n > 1 else ""
    unfinished = " UNFINISHED" if context.unfinished else ""
    description = f"AI {kind}{version}{unfinished} {NOT_FOR_CLINICAL_USE}"
    return SeriesIdentity(uid, number, description[:64])


def unfinished_notice(context: OutputContext) -> list[str]:
    """The line to burn into a picture of an unfinished study (none otherwise)."""
    return [UNFINISHED_NOTICE] if context.unfinished else []


def instance_uid(kind: str, model: ModelInfo, *parts: str) -> str:
    return derive_uid("instance", kind, model.name, model.version, *parts)


def identity_kwargs(
    series: SeriesIdentity, sop_instance_uid: str, instance_number: int, context: OutputContext
) -> dict[str, Any]:
    """Keyword arguments every highdicom SOP class takes: the new object's series and instance."""
    return {
        "series_instance_uid": series.series_instance_uid,
        "series_number": series.series_number,
        "sop_instance_uid": sop_instance_uid,
        "instance_number": instance_number,
        "manufacturer": context.manufacturer,
        "series_description": series.series_description,
    }


def equipment_kwargs(model: ModelInfo, context: OutputContext, now: dt.datetime) -> dict[str, Any]:
    """Keyword arguments every highdicom SOP class accepts: equipment, series date/time.

    highdicom leaves Series Date/Time empty; Orthanc Explorer then files the series under "?".
    Content Qualification RESEARCH marks the object as not a product result.
    """
    return {
        "manufacturer_model_name": f"{model.name} {model.version}"[:64],
        "software_versions": context.software_version,
        "device_serial_number": "dicom-node",
        "institution_name": context.institution_name,
        "series_date": now.date(),
        "series_time": now.time().replace(microsecond=0),
        "content_qualification": hd.ContentQualificationValues.RESEARCH,
        "coding_schemes": [PRIVATE_SCHEME_ITEM],
    }


def algorithm_identification(model: ModelInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification for SR measurement groups."""
    return hd.sr.AlgorithmIdentification(
        name=model.name, version=model.version, family=ALGORITHM_FAMILY, manufacturer="dicom-node"
    )


def algorithm_identification_sequence(model: ModelInfo) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification Sequence for SEG segment descriptions."""
    return hd.AlgorithmIdentificationSequence(
        name=model.name, family=ALGORITHM_FAMILY, version=model.version, source="dicom-node"
    )


def device_observer(model: ModelInfo, context: OutputContext) -> hd.sr.ObserverContext:
    """The SR's observer: this node running this model (a device, not a person)."""
    return hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(codes.DCM.Device),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid("device", context.manufacturer, model.name),
            name="dicom-node",
            manufacturer_name=context.manufacturer,
            model_name=f"{model.name} {model.version}"[:64],
        ),
    )


def now_local() -> dt.datetime:
    return dt.datetime.now().replace(microsecond=0)


MeasurementGroup = (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
)


def measurement_sr(
    groups: Sequence[MeasurementGroup],
    procedure: Code | hd.sr.CodedConcept,
    sources: Sequence[Dataset],
    evidence: Sequence[Dataset],
    context: OutputContext,
    model: ModelInfo,
    now: dt.datetime,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 Measurement Report of ``groups`` as an UNVERIFIED Comprehensive 3D SR
    (COMPLETE, or PARTIAL with ``UNFINISHED_DESCRIPTION`` for an unfinished study).

    Its series and instance UIDs derive from ``sources``; ``evidence`` is every object the
    groups reference (the sources, and a SEG where one is referenced).
    """
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=device_observer(model, context)
        ),
        procedure_reported=procedure,
        imaging_measurements=list(groups),
        title=REPORT_TITLE,
    )
    series = series_identity("report", SR_SERIES_NUMBER, model, sources, context)
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report,
        # CompletionFlag PARTIAL: the study it reports on may be incomplete.
        is_complete=not context.unfinished,
        is_final=False,
        is_verified=False,  # VerificationFlag UNVERIFIED: nobody has checked this result
        **identity_kwargs(series, instance_uid("sr", model, source_key(sources)), 1, context),
        **equipment_kwargs(model, context, now),
    )
    if context.unfinished:
        sr.CompletionFlagDescription = UNFINISHED_DESCRIPTION
    return sr


def secondary_capture(
    source: Dataset,
    pixels: np.ndarray,
    series: SeriesIdentity,
    instance_number: int,
    sop_instance_uid: str,
    patient_orientation: tuple[str, str],
    context: OutputContext,
    model: ModelInfo,
    now: dt.datetime,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of ``source`` (same patient and study) with burned-in text."""
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=patient_orientation,
        **identity_kwargs(series, sop_instance_uid, instance_number, context),
        **equipment_kwargs(model, context, now),
    )
    # Text and a notice are part of the pixels: viewers must not hide or anonymise them away.
    sc.BurnedInAnnotation = "YES"
    # General Series needs Laterality unless the body part is known to be unpaired (chest).
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    else:
        sc.Laterality = ""
    return sc


# Type 2 attributes of the Patient and General Study modules that highdicom copies from the
# source: they must be present (empty is allowed), and anonymised sources often lack them.
TYPE2_SOURCE_ATTRIBUTES: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def sources_for_outputs(sources: Sequence[Dataset]) -> list[Dataset]:
    """The sources as highdicom can copy them into our outputs.

    A source that lacks a Type 2 attribute, or holds a value highdicom refuses (a malformed
    date or time, a sex other than M/F/O, an unknown character set), is replaced by a copy in
    which that attribute is present and empty (the character set is dropped): the finding
    belongs in the patient's study even when the source's demographics are broken.  An
    incomplete Referenced Study Sequence (Type 3; real anonymised series carry items without
    a SOP Class UID) is dropped rather than copied into a non-conformant output.  The copy
    shares the source's other elements (pixels included); the source is not changed.
    """
    completed = []
    for source in sources:
        unusable = [k for k in TYPE2_SOURCE_ATTRIBUTES if k not in source or not _usable(source, k)]
        charset_ok = _usable(source, "SpecificCharacterSet")
        study_refs_ok = _complete_references(source.get("ReferencedStudySequence"))
        if not unusable and charset_ok and study_refs_ok:
            completed.append(source)
            continue
        # A new element dict (Dataset(source) would share the source's).
        copy = Dataset({tag: source.get_item(tag) for tag in source.keys()})  # noqa: SIM118
        copy.file_meta = source.file_meta
        for keyword in unusable:
            if keyword in copy:
                del copy[keyword]  # the element object is the source's: replace, never edit
            setattr(copy, keyword, None)
        if not charset_ok:
            del copy.SpecificCharacterSet
        if not study_refs_ok:
            del copy.ReferencedStudySequence
        completed.append(copy)
    return completed


def _complete_references(sequence: Any) -> bool:
    """Whether every item of a reference sequence has both its SOP Class and Instance UIDs."""
    if not sequence:
        return True
    return all(
        "ReferencedSOPClassUID" in item and "ReferencedSOPInstanceUID" in item for item in sequence
    )


def _usable(source: Dataset, keyword: str) -> bool:
    """Whether ``keyword``'s value survives highdicom's conversions (absent counts as usable)."""
    try:
        value = source.get(keyword)
        if value in (None, ""):
            return True
        if keyword == "PatientSex":
            return str(value) in {"M", "F", "O"}
        if keyword == "SpecificCharacterSet":
            names = [value] if isinstance(value, str) else list(value)
            return all(str(n) in python_encoding or str(n) == "" for n in names)
        vr = dictionary_VR(keyword)
        if vr == "DA":
            DA(str(value))
        elif vr == "TM":
            TM(str(value))
        elif vr == "PN":
            str(value).encode("utf-8")
    except Exception:
        return False
    return True

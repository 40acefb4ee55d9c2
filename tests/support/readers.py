"""The node's own outputs read back through highdicom: for the demo, tests and validation."""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
from pydicom import Dataset

from dicom_node.outputs.codes import (
    FINDING_BY_CLASS,
    GEOGRAPHIC_EXTENT,
    OPACITY_SCORE,
    SEVERITY_LEVEL,
    SEVERITY_LEVEL_VALUES,
)
from dicom_node.outputs.common import MeasurementGroup


@dataclass(frozen=True)
class XrayReportImage:
    source_sop_instance_uid: str
    label: str
    probabilities: dict[str, float]
    region_type: str
    region_points: int
    algorithm: str
    geographic_extent: float | None = None
    opacity: float | None = None
    severity_level: int | None = None


def read_xray_report(dataset: Dataset) -> list[XrayReportImage]:
    """Our X-ray SR: one entry per measurement group (= per analysed radiograph)."""
    report = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    content: hd.sr.MeasurementReport = report.content  # type: ignore[assignment]
    class_by_code = {concept.value: key for key, concept in FINDING_BY_CLASS.items()}
    images = []
    for group in content.get_planar_roi_measurement_groups():
        probabilities, scores = {}, {}
        for measurement in group.get_measurements():
            code = str(measurement.name.value)
            if code.startswith("P-"):
                probabilities[code.removeprefix("P-").lower()] = float(measurement.value)
            else:
                scores[code] = float(measurement.value)
        levels = [
            SEVERITY_LEVEL_VALUES.index(item.value)
            for item in group.get_qualitative_evaluations()
            if item.name == SEVERITY_LEVEL
        ]
        finding = group.finding_type
        roi = group.roi
        assert roi is not None
        reference = roi.ContentSequence[0].ReferencedSOPSequence[0]
        algorithm = next(
            (
                str(item.TextValue)
                for item in group[0].ContentSequence
                if item.ConceptNameCodeSequence[0].CodeValue == "111001"  # Algorithm Name
            ),
            "",
        )
        images.append(
            XrayReportImage(
                source_sop_instance_uid=str(reference.ReferencedSOPInstanceUID),
                label=class_by_code[str(finding.value)] if finding else "unknown",
                probabilities=probabilities,
                region_type=str(roi.GraphicType),
                region_points=len(roi.GraphicData) // 2,
                algorithm=algorithm,
                geographic_extent=scores.get(GEOGRAPHIC_EXTENT.value),
                opacity=scores.get(OPACITY_SCORE.value),
                severity_level=levels[0] if levels else None,
            )
        )
    return images


def read_ct_report(dataset: Dataset) -> dict[str, dict[str, float]]:
    """Our CT SR's numbers back: ``{group: {measurement meaning: value}}``.

    Groups are keyed by tracking identifier ("CT COVID-19 assessment (AI, unverified)",
    "Right lung (AI, unverified)", ...).
    """
    report = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    content: hd.sr.MeasurementReport = report.content  # type: ignore[assignment]
    groups: list[MeasurementGroup] = [
        *content.get_image_measurement_groups(),
        *content.get_volumetric_roi_measurement_groups(),
    ]
    return {
        str(group.tracking_identifier): {
            str(m.name.meaning): float(m.value) for m in group.get_measurements()
        }
        for group in groups
    }


def read_ct_assessment(dataset: Dataset) -> dict[str, str]:
    """Our CT SR's coded evaluations back: ``{concept meaning: value meaning}``, e.g.
    ``{"RSNA COVID-19 CT category": "Typical appearance for COVID-19 pneumonia"}``."""
    report = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    content: hd.sr.MeasurementReport = report.content  # type: ignore[assignment]
    evaluations: dict[str, str] = {}
    for group in content.get_image_measurement_groups():
        for item in group.get_qualitative_evaluations():
            value: hd.sr.CodedConcept = item.value  # type: ignore[assignment]
            evaluations[str(item.name.meaning)] = str(value.meaning)
    return evaluations

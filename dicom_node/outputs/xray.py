"""X-ray outputs: one TID 1500 Comprehensive 3D SR per study and one Secondary Capture per image.

The SR holds, per radiograph, a planar ROI measurement group whose image region is a closed
POLYLINE around the Grad-CAM hot spot on the lung fields (OHIF draws SR groups only when they
have a region), the predicted finding as the group's Finding, and each class probability as a
numeric measurement, and, with a severity model, the geographic extent and opacity scores
(UCUM ``{score}``) and the severity level as a coded qualitative evaluation.  The SC is the
radiograph with the heatmap blended in, the lung fields and the hot region outlined, and the
result, the severity and a research notice burned in, for people looking at images rather
than reports.

A label the triage rule chose although it is not the most probable class
(``triage_suspicion``) is said to be a suspicion everywhere: the SC caption and the SR's
tracking identifier say "suspected (triage threshold ...)", and the SR group carries the
qualitative evaluation Certainty of Finding (DCM 111012) = Suspected (SCT 415684004).
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from dicom_node import RESEARCH_NOTICE
from dicom_node.domain import (
    ModelInfo,
    OutputContext,
    XrayFinding,
    XrayImageFinding,
    XraySeverity,
)
from dicom_node.errors import OutputError
from dicom_node.outputs import render
from dicom_node.outputs.codes import (
    CLASS_DISPLAY_NAME,
    FINDING_BY_CLASS,
    GEOGRAPHIC_EXTENT,
    LUNG,
    OPACITY_SCORE,
    PROCEDURE_CHEST_XRAY,
    SEVERITY_LEVEL,
    SEVERITY_LEVEL_VALUES,
    UNIT_NONE,
    UNIT_SCORE,
    probability_concept,
)
from dicom_node.outputs.common import (
    SC_SERIES_NUMBER,
    SeriesIdentity,
    algorithm_identification,
    derive_uid,
    instance_uid,
    measurement_sr,
    now_local,
    secondary_capture,
    series_identity,
    sources_for_outputs,
    unfinished_notice,
)

SC_MAX_SIDE = 1024  # the SC is for reading on screen; full detector size adds nothing
CERTAINTY_OF_FINDING = codes.DCM.CertaintyOfFinding  # (111012, DCM)
SUSPECTED = codes.SCT.Suspected  # (415684004, SCT)


def label_text(image: XrayImageFinding) -> str:
    """The label as people should read it: a triage-threshold label says it is a suspicion."""
    name = CLASS_DISPLAY_NAME[image.label]
    if not image.triage_suspicion:
        return name
    top = image.top_class
    return (
        f"{name} suspected (triage threshold; p={image.probabilities[image.label]:.2f}, "
        f"top: {CLASS_DISPLAY_NAME[top]} {image.probabilities[top]:.2f})"
    )


def severity_text(severity: XraySeverity) -> str:
    """One line for the SC: both scores and the level."""
    return (
        f"Severity: level {severity.level} {severity.level_name} "
        f"(extent {severity.geographic_extent:.1f}/8, opacity {severity.opacity:.1f}/6)"
    )


def build_xray_outputs(
    finding: XrayFinding, sources: Sequence[Dataset], context: OutputContext, model: ModelInfo
) -> list[Dataset]:
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources_for_outputs(sources)}
    missing = [
        f.source_sop_instance_uid for f in finding.images if f.source_sop_instance_uid not in by_uid
    ]
    if missing:
        raise OutputError(f"finding refers to instances not among the sources: {missing}")
    now = now_local()
    analysed = [by_uid[f.source_sop_instance_uid] for f in finding.images]
    with warnings.catch_warnings():
        # Source person names like "ward" trigger highdicom's formatting warning; they are
        # copied unchanged from the source and are not ours to fix.
        warnings.simplefilter("ignore", UserWarning)
        outputs: list[Dataset] = [build_xray_sr(finding, analysed, context, model, now)]
        sc_series = series_identity("heatmap", SC_SERIES_NUMBER, model, analysed, context)
        for number, image in enumerate(finding.images, start=1):
            outputs.append(
                build_xray_sc(
                    image,
                    by_uid[image.source_sop_instance_uid],
                    sc_series,
                    number,
                    context,
                    model,
                    now,
                )
            )
    return outputs


def build_xray_sr(
    finding: XrayFinding,
    sources: Sequence[Dataset],
    context: OutputContext,
    model: ModelInfo,
    now: dt.datetime,
) -> hd.sr.Comprehensive3DSR:
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    groups = [
        _measurement_group(image, by_uid[image.source_sop_instance_uid], model)
        for image in finding.images
    ]
    return measurement_sr(groups, PROCEDURE_CHEST_XRAY, sources, sources, context, model, now)


def _measurement_group(
    image: XrayImageFinding, source: Dataset, model: ModelInfo
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    algorithm = algorithm_identification(model)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=_closed_polygon(image.hot_region),
        source_image=hd.sr.SourceImageForRegion.from_source_image(source),
    )
    measurements = [
        hd.sr.Measurement(
            name=probability_concept(key),
            value=round(float(image.probabilities[key]), 6),
            unit=UNIT_NONE,
        )
        for key in model.classes or tuple(image.probabilities)
    ]
    evaluations = []
    if image.triage_suspicion:
        # The finding stays the class's code; a triage label is qualified, not recoded.
        evaluations.append(hd.sr.QualitativeEvaluation(name=CERTAINTY_OF_FINDING, value=SUSPECTED))
    severity = image.severity
    if severity is not None:
        measurements += [
            hd.sr.Measurement(
                name=GEOGRAPHIC_EXTENT, value=round(severity.geographic_extent, 2), unit=UNIT_SCORE
            ),
            hd.sr.Measurement(
                name=OPACITY_SCORE, value=round(severity.opacity, 2), unit=UNIT_SCORE
            ),
        ]
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=SEVERITY_LEVEL, value=SEVERITY_LEVEL_VALUES[severity.level]
            )
        )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid("tracking", model.name, model.version, image.source_sop_instance_uid),
            identifier=f"{label_text(image)} (AI, unverified)",
        ),
        referenced_region=region,
        # The predicted class is the group's Finding (TID 1410 row "Finding").
        finding_type=FINDING_BY_CLASS[image.label],
        finding_sites=[hd.sr.FindingSite(anatomic_location=LUNG)],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
    )


def _closed_polygon(points: np.ndarray) -> np.ndarray:
    polygon = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    if len(polygon) < 3:
        raise OutputError("the hot region needs at least 3 points")
    if not np.array_equal(polygon[0], polygon[-1]):
        polygon = np.vstack([polygon, polygon[:1]])
    return polygon


def build_xray_sc(
    image: XrayImageFinding,
    source: Dataset,
    series: SeriesIdentity,
    instance_number: int,
    context: OutputContext,
    model: ModelInfo,
    now: dt.datetime,
) -> hd.sc.SCImage:
    pixels = render_heatmap_image(image, model, unfinished_notice(context))
    orientation = tuple(str(v) for v in source.get("PatientOrientation") or ())
    return secondary_capture(
        source,
        pixels,
        series,
        instance_number,
        instance_uid("sc", model, image.source_sop_instance_uid),
        (orientation[0], orientation[1]) if len(orientation) == 2 else ("", ""),
        context,
        model,
        now,
    )


def render_heatmap_image(
    image: XrayImageFinding, model: ModelInfo, notices: Sequence[str] = ()
) -> np.ndarray:
    """The radiograph, heatmap blended in, lung fields and hot region outlined, result and
    notice burned in; ``notices`` (an unfinished study) go first."""
    rgb = render.heatmap_picture(
        image.display_image,
        image.heatmap,
        _closed_polygon(image.hot_region),
        image.lung_outline,
        SC_MAX_SIDE,
    )
    ranked = sorted(image.probabilities.items(), key=lambda item: -item[1])
    top = [*notices, f"AI: {label_text(image)}"] + [
        f"  {CLASS_DISPLAY_NAME[key]}: {value:.2f}" for key, value in ranked
    ]
    if image.heat_in_lungs is not None:
        top.append(f"  heat on the lungs: {100 * image.heat_in_lungs:.0f}%")
    if image.severity is not None:
        top.append(severity_text(image.severity))
    bottom = [RESEARCH_NOTICE, f"{model.name} {model.version} - Grad-CAM, unverified"]
    if image.lung_outline:
        bottom.append("outlines: lung fields cyan, hot region yellow")
    return render.burn_in_text(rgb, top, bottom)

"""X-ray outputs: one TID 1500 Comprehensive 3D SR per study and one Secondary Capture per image.

The SR holds, per radiograph, a planar ROI measurement group whose image region is a closed
POLYLINE around the Grad-CAM hot spot (OHIF draws SR groups only when they have a region),
the predicted finding as a coded qualitative evaluation, and each class probability as a
numeric measurement.  The SC is the radiograph with the heatmap blended in and the result
and a research notice burned in, for people looking at images rather than reports.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset

from dicom_node import RESEARCH_NOTICE
from dicom_node.domain import ModelInfo, OutputContext, XrayFinding, XrayImageFinding
from dicom_node.outputs import render
from dicom_node.outputs.codes import (
    CLASS_DISPLAY_NAME,
    FINDING_BY_CLASS,
    LUNG,
    PROCEDURE_CHEST_XRAY,
    UNIT_NONE,
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
)

SC_MAX_SIDE = 1024  # the SC is for reading on screen; full detector size adds nothing


def build_xray_outputs(
    finding: XrayFinding, sources: Sequence[Dataset], context: OutputContext, model: ModelInfo
) -> list[Dataset]:
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources_for_outputs(sources)}
    missing = [
        f.source_sop_instance_uid for f in finding.images if f.source_sop_instance_uid not in by_uid
    ]
    if missing:
        raise ValueError(f"finding refers to instances not among the sources: {missing}")
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
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid("tracking", model.name, model.version, image.source_sop_instance_uid),
            identifier=f"{CLASS_DISPLAY_NAME[image.label]} (AI, unverified)",
        ),
        referenced_region=region,
        # The predicted class is the group's Finding (TID 1410 row "Finding").
        finding_type=FINDING_BY_CLASS[image.label],
        finding_sites=[hd.sr.FindingSite(anatomic_location=LUNG)],
        algorithm_id=algorithm,
        measurements=measurements,
    )


def _closed_polygon(points: np.ndarray) -> np.ndarray:
    polygon = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    if len(polygon) < 3:
        raise ValueError("the hot region needs at least 3 points")
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
    pixels = render_heatmap_image(image, model)
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


def render_heatmap_image(image: XrayImageFinding, model: ModelInfo) -> np.ndarray:
    """The radiograph, heatmap blended in, hot region outlined, result and notice burned in."""
    gray = image.display_image
    scale = min(1.0, SC_MAX_SIDE / max(gray.shape))
    gray = render.fit_within(gray, SC_MAX_SIDE)
    heat = render.fit_within(image.heatmap.astype(np.float32), SC_MAX_SIDE)
    rgb = render.blend_heatmap(gray, heat)
    rgb = render.draw_outline(rgb, _closed_polygon(image.hot_region) * scale)
    ranked = sorted(image.probabilities.items(), key=lambda item: -item[1])
    top = [f"AI: {CLASS_DISPLAY_NAME[image.label]}"] + [
        f"  {CLASS_DISPLAY_NAME[key]}: {value:.2f}" for key, value in ranked
    ]
    bottom = [RESEARCH_NOTICE, f"{model.name} {model.version} - Grad-CAM, unverified"]
    return render.burn_in_text(rgb, top, bottom)

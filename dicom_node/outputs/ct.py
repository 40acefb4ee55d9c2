"""CT outputs: a TID 1500 SR, the lungs/lesions SEG and Secondary Capture key images.

Each goes into its own new series of the source study (one SOP class per series).

SR (Comprehensive 3D SR, UNVERIFIED) measurement groups:

- study level (TID 1501): P(COVID-19), CT severity score (0-25, zones approximating lobes),
  lung, lesion, GGO and consolidation volumes, involvement and GGO/consolidation shares;
- one per lung (TID 1501, finding site lung with laterality): the same volumes and shares;
- one per zone (TID 1501): lung and lesion volume, involvement, zone score 0-5; the tracking
  identifier says the zone approximates a lobe;
- GGO and consolidation (TID 1411, volumetric ROI): volume, referencing their SEG segment, so
  a viewer can link the number to the overlay.

Composite concepts without a standard code (involvement, shares, severity) use the project's
private scheme declared in ``outputs.codes``.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_node import RESEARCH_NOTICE
from dicom_node.outputs import render
from dicom_node.outputs.codes import (
    PRIVATE_SCHEME,
    PROCEDURE_CHEST_CT,
    REPORT_TITLE,
    UNIT_ML,
    UNIT_NONE,
    UNIT_PERCENT,
    probability_concept,
)
from dicom_node.outputs.common import (
    SC_SERIES_NUMBER,
    SR_SERIES_NUMBER,
    SeriesIdentity,
    algorithm_identification,
    derive_uid,
    device_observer,
    equipment_kwargs,
    instance_uid,
    now_local,
    series_identity,
    source_key,
)
from dicom_node.outputs.seg import (
    CONSOLIDATION,
    CONSOLIDATION_SEGMENT,
    GGO_SEGMENT,
    GROUND_GLASS_OPACITY,
    build_ct_seg,
)
from dicom_node.pipelines.base import ModelInfo, OutputContext
from dicom_node.pipelines.ct_quant import CONSOLIDATION as CONSOLIDATION_LABEL
from dicom_node.pipelines.ct_quant import GGO as GGO_LABEL
from dicom_node.pipelines.ct_quant import LungMeasurement, RegionScore
from dicom_node.pipelines.ct_series import hu_image

if TYPE_CHECKING:
    from dicom_node.pipelines.ct import CtFinding

LUNG_WINDOW_HU = (-1350.0, 150.0)  # centre -600, width 1500
GGO_COLOUR = (255, 215, 0)
CONSOLIDATION_COLOUR = (255, 40, 40)
UNIT_SCORE = hd.sr.CodedConcept("{score}", "UCUM", "score")
MIN_KEY_IMAGE_SIDE = 512


Tracking = Callable[[str, str], hd.sr.TrackingIdentifier]
Group = (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
)


def _private(code: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code, PRIVATE_SCHEME, meaning)


LUNG_VOLUME = _private("CT-LUNG-ML", "Lung volume")
LESION_VOLUME = _private("CT-LESION-ML", "Lesion volume (GGO and consolidation)")
GGO_VOLUME = _private("CT-GGO-ML", "Ground-glass opacity volume")
CONSOLIDATION_VOLUME = _private("CT-CONS-ML", "Consolidation volume")
INVOLVEMENT = _private("CT-INVOLVED", "Lung involvement (lesion volume / lung volume)")
GGO_SHARE = _private("CT-GGO-SHARE", "Ground-glass share of lesion volume")
CONSOLIDATION_SHARE = _private("CT-CONS-SHARE", "Consolidation share of lesion volume")
SEVERITY_SCORE = _private("CT-SEVERITY", "CT severity score 0-25 (zones approximating lobes)")
ZONE_SCORE = _private("CT-ZONE-SCORE", "Zone severity score 0-5")


def build_ct_outputs(
    finding: CtFinding, sources: Sequence[Dataset], context: OutputContext, model: ModelInfo
) -> list[Dataset]:
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    missing = [uid for uid in finding.source_sop_instance_uids if uid not in by_uid]
    if missing:
        raise ValueError(f"finding refers to {len(missing)} instance(s) not among the sources")
    datasets = [by_uid[uid] for uid in finding.source_sop_instance_uids]
    now = now_local()
    seg = build_ct_seg(finding.lungs, finding.lesions, finding.step, datasets, context, model, now)
    with warnings.catch_warnings():
        # highdicom warns about source person names it copies unchanged; not ours to fix.
        warnings.simplefilter("ignore", UserWarning)
        sr = build_ct_sr(finding, datasets, seg, context, model, now)
        sc_series = series_identity("key images", SC_SERIES_NUMBER, model, datasets, context)
        scs = [
            build_key_image(finding, datasets, k, sc_series, number, context, model, now)
            for number, k in enumerate(finding.key_slices, start=1)
        ]
    return [sr, seg, *scs]


def build_ct_sr(
    finding: CtFinding,
    datasets: Sequence[Dataset],
    seg: hd.seg.Segmentation,
    context: OutputContext,
    model: ModelInfo,
    now: dt.datetime,
) -> hd.sr.Comprehensive3DSR:
    algorithm = algorithm_identification(model)
    q = finding.quantification
    series_uid = finding.series_instance_uid

    def tracking(key: str, label: str) -> hd.sr.TrackingIdentifier:
        uid = derive_uid("tracking", model.name, model.version, series_uid, key)
        return hd.sr.TrackingIdentifier(uid=uid, identifier=f"{label} (AI, unverified)"[:64])

    study_measurements = [
        hd.sr.Measurement(
            name=probability_concept("covid"),
            value=round(finding.covid_probability, 6),
            unit=UNIT_NONE,
        ),
        hd.sr.Measurement(name=SEVERITY_SCORE, value=q.severity_score, unit=UNIT_SCORE),
        *_lung_measurements(q.total),
    ]
    groups: list[Group] = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking("study", "CT COVID-19 assessment"),
            algorithm_id=algorithm,
            finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)],
            measurements=study_measurements,
        )
    ]
    for key, label, laterality, measurement in (
        ("right", "Right lung", codes.SCT.Right, q.right),
        ("left", "Left lung", codes.SCT.Left, q.left),
    ):
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking(key, label),
                algorithm_id=algorithm,
                finding_sites=[_lung_site(laterality)],
                measurements=_lung_measurements(measurement),
            )
        )
    groups.extend(_zone_group(region, tracking, algorithm) for region in q.regions)
    for segment, finding_type, volume_ml, label in (
        (GGO_SEGMENT, GROUND_GLASS_OPACITY, q.total.ggo_ml, "Ground-glass opacity"),
        (CONSOLIDATION_SEGMENT, CONSOLIDATION, q.total.consolidation_ml, "Consolidation"),
    ):
        if not _segment_present(seg, segment):
            continue
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking(f"segment-{segment}", label),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=segment,
                    source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
                ),
                finding_type=finding_type,
                algorithm_id=algorithm,
                finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)],
                measurements=[
                    hd.sr.Measurement(name=codes.SCT.Volume, value=_ml(volume_ml), unit=UNIT_ML)
                ],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=device_observer(model, context)
        ),
        procedure_reported=PROCEDURE_CHEST_CT,
        imaging_measurements=groups,
        title=REPORT_TITLE,
    )
    series = series_identity("report", SR_SERIES_NUMBER, model, datasets, context)
    return hd.sr.Comprehensive3DSR(
        evidence=[*datasets, seg],
        content=report,
        series_instance_uid=series.series_instance_uid,
        series_number=series.series_number,
        sop_instance_uid=instance_uid("sr", model, source_key(datasets)),
        instance_number=1,
        manufacturer=context.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,  # VerificationFlag UNVERIFIED: nobody has checked this result
        series_description=series.series_description,
        **equipment_kwargs(model, context, now),
    )


def _ml(value: float) -> float:
    return round(float(value), 2)


def _lung_site(laterality: Code) -> hd.sr.FindingSite:
    return hd.sr.FindingSite(anatomic_location=codes.SCT.Lung, laterality=laterality)


def _lung_measurements(m: LungMeasurement) -> list[hd.sr.Measurement]:
    return [
        hd.sr.Measurement(name=LUNG_VOLUME, value=_ml(m.lung_ml), unit=UNIT_ML),
        hd.sr.Measurement(name=LESION_VOLUME, value=_ml(m.lesion_ml), unit=UNIT_ML),
        hd.sr.Measurement(name=GGO_VOLUME, value=_ml(m.ggo_ml), unit=UNIT_ML),
        hd.sr.Measurement(name=CONSOLIDATION_VOLUME, value=_ml(m.consolidation_ml), unit=UNIT_ML),
        hd.sr.Measurement(name=INVOLVEMENT, value=_ml(m.involvement_percent), unit=UNIT_PERCENT),
        hd.sr.Measurement(name=GGO_SHARE, value=_ml(m.ggo_share_percent), unit=UNIT_PERCENT),
        hd.sr.Measurement(
            name=CONSOLIDATION_SHARE, value=_ml(m.consolidation_share_percent), unit=UNIT_PERCENT
        ),
    ]


def _zone_group(
    region: RegionScore, tracking: Tracking, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    lobe = region.name.replace(" zone", " lobe")
    laterality = codes.SCT.Right if region.name.startswith("right") else codes.SCT.Left
    label = f"{region.name.capitalize()}, approx. {lobe}"
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(region.name, label),
        algorithm_id=algorithm,
        finding_sites=[_lung_site(laterality)],
        measurements=[
            hd.sr.Measurement(name=LUNG_VOLUME, value=_ml(region.lung_ml), unit=UNIT_ML),
            hd.sr.Measurement(name=LESION_VOLUME, value=_ml(region.lesion_ml), unit=UNIT_ML),
            hd.sr.Measurement(
                name=INVOLVEMENT, value=_ml(region.involvement_percent), unit=UNIT_PERCENT
            ),
            hd.sr.Measurement(name=ZONE_SCORE, value=region.score, unit=UNIT_SCORE),
        ],
    )


def _segment_present(seg: hd.seg.Segmentation, number: int) -> bool:
    """Whether any frame of the SEG belongs to segment ``number`` (empty ones are omitted)."""
    for frame in seg.PerFrameFunctionalGroupsSequence:
        if frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber == number:
            return True
    return False


def build_key_image(
    finding: CtFinding,
    datasets: Sequence[Dataset],
    k: int,
    series: SeriesIdentity,
    instance_number: int,
    context: OutputContext,
    model: ModelInfo,
    now: dt.datetime,
) -> hd.sc.SCImage:
    source = datasets[k]
    pixels = render_key_image(finding, source, k, model)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series.series_instance_uid,
        series_number=series.series_number,
        sop_instance_uid=instance_uid("ct-key", model, str(source.SOPInstanceUID)),
        instance_number=instance_number,
        manufacturer=context.manufacturer,
        patient_orientation=patient_orientation(source),
        series_description=series.series_description,
        **equipment_kwargs(model, context, now),
    )
    # Text and a notice are part of the pixels: viewers must not hide or anonymise them away.
    sc.BurnedInAnnotation = "YES"
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    else:
        sc.Laterality = ""  # General Series needs it unless the body part is unpaired
    return sc


def patient_orientation(ds: Dataset) -> tuple[str, str]:
    """Patient Orientation letters of the rows and columns, e.g. ("L", "P") for axial HFS."""
    iop = [float(v) for v in ds.ImageOrientationPatient]

    def letters(direction: Sequence[float]) -> str:
        names = (("L", "R"), ("P", "A"), ("H", "F"))
        ranked = sorted(range(3), key=lambda axis: -abs(direction[axis]))
        out = ""
        for axis in ranked:
            if abs(direction[axis]) > 0.25:
                out += names[axis][0] if direction[axis] > 0 else names[axis][1]
        return out

    return letters(iop[:3]), letters(iop[3:])


def render_key_image(finding: CtFinding, source: Dataset, k: int, model: ModelInfo) -> np.ndarray:
    """The slice in the lung window, lesions tinted, the numbers and a notice burned in."""
    hu = hu_image(source).astype(np.float32)
    low, high = LUNG_WINDOW_HU
    gray = (np.clip((hu - low) / (high - low), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    rows, cols = gray.shape
    lesions = finding.lesions[k].repeat(finding.step, 0).repeat(finding.step, 1)[:rows, :cols]
    # Small matrices are enlarged (pixel repeat) so the burned-in text leaves the image visible.
    zoom = max(1, -(-MIN_KEY_IMAGE_SIDE // max(rows, cols)))
    gray = gray.repeat(zoom, 0).repeat(zoom, 1)
    lesions = lesions.repeat(zoom, 0).repeat(zoom, 1)
    rgb = render.gray_to_rgb(gray)
    rgb = render.tint_mask(rgb, lesions == GGO_LABEL, GGO_COLOUR)
    rgb = render.tint_mask(rgb, lesions == CONSOLIDATION_LABEL, CONSOLIDATION_COLOUR)
    q = finding.quantification
    total = q.total
    top = [
        "AI CT COVID-19 assessment (unverified)",
        f"P(COVID-19): {finding.covid_probability:.2f}",
        f"Involvement: {total.involvement_percent:.1f}% "
        f"(R {q.right.involvement_percent:.1f}%, L {q.left.involvement_percent:.1f}%)",
        f"Lesions: {total.lesion_ml:.0f} mL of {total.lung_ml:.0f} mL lung",
        f"  GGO {total.ggo_share_percent:.0f}%, consolidation "
        f"{total.consolidation_share_percent:.0f}%",
        f"Severity: {q.severity_score}/25 (zones approximate lobes)",
    ]
    bottom = [
        RESEARCH_NOTICE,
        "Yellow: ground-glass opacity, red: consolidation",
        f"{model.name} {model.version}",
    ]
    return render.burn_in_text(rgb, top, bottom)


def read_ct_report(dataset: Dataset) -> dict[str, dict[str, float]]:
    """Our CT SR's numbers back, through highdicom: ``{group: {measurement meaning: value}}``.

    Groups are keyed by tracking identifier ("CT COVID-19 assessment (AI, unverified)",
    "Right lung (AI, unverified)", ...).  For tests and demos.
    """
    report = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    content: hd.sr.MeasurementReport = report.content  # type: ignore[assignment]
    groups: list[Group] = [
        *content.get_image_measurement_groups(),
        *content.get_volumetric_roi_measurement_groups(),
    ]
    return {
        str(group.tracking_identifier): {
            str(m.name.meaning): float(m.value) for m in group.get_measurements()
        }
        for group in groups
    }

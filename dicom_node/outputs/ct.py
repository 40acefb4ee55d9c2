"""CT outputs: a TID 1500 SR, the lungs/lesions SEG and Secondary Capture key images.

Each goes into its own new series of the source study (one SOP class per series).

SR (Comprehensive 3D SR, UNVERIFIED) measurement groups:

- study level (TID 1501): the RSNA COVID-19 CT category (qualitative evaluation) and the
  features it was derived from (bilateral; peripheral, expected peripheral and lower-zone
  shares; foci; compact solid lesions, counted apart: number, largest diameter, volume), CT
  severity score (0-25, zones approximating lobes), lung, lesion, GGO and consolidation
  volumes, involvement and GGO/consolidation shares.  Involvement counts GGO and
  consolidation only: nodules and masses are not COVID-19 involvement;
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

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from scipy import ndimage

from dicom_node import RESEARCH_NOTICE
from dicom_node.domain import CONSOLIDATION as CONSOLIDATION_LABEL
from dicom_node.domain import FOCAL as FOCAL_LABEL
from dicom_node.domain import GGO as GGO_LABEL
from dicom_node.domain import (
    CtFeatures,
    CtFinding,
    LungMeasurement,
    ModelInfo,
    OutputContext,
    RegionScore,
)
from dicom_node.errors import OutputError
from dicom_node.outputs import render
from dicom_node.outputs.codes import (
    BILATERAL,
    CONSOLIDATION,
    CONSOLIDATION_SHARE,
    CONSOLIDATION_VOLUME,
    CT_CATEGORY,
    CT_CATEGORY_VALUES,
    FOCAL_DIAMETER,
    FOCAL_LESIONS,
    FOCAL_VOLUME,
    FOCI,
    GGO_SHARE,
    GGO_VOLUME,
    GROUND_GLASS_OPACITY,
    INVOLVEMENT,
    LESION_VOLUME,
    LOWER_SHARE,
    LUNG_VOLUME,
    MASS,
    NO,
    PERIPHERAL_EXPECTED,
    PERIPHERAL_SHARE,
    PROCEDURE_CHEST_CT,
    SEVERITY_SCORE,
    UNIT_COUNT,
    UNIT_ML,
    UNIT_MM,
    UNIT_PERCENT,
    UNIT_SCORE,
    YES,
    ZONE_SCORE,
)
from dicom_node.outputs.common import (
    SC_SERIES_NUMBER,
    MeasurementGroup,
    SeriesIdentity,
    algorithm_identification,
    derive_uid,
    instance_uid,
    measurement_sr,
    now_local,
    secondary_capture,
    series_identity,
    source_key,
    sources_for_outputs,
    unfinished_notice,
)
from dicom_node.outputs.seg import CONSOLIDATION_SEGMENT, FOCAL_SEGMENT, GGO_SEGMENT, build_ct_seg
from dicom_node.pixels import hu_image

LUNG_WINDOW_HU = (-1350.0, 150.0)  # centre -600, width 1500
GGO_COLOUR = (255, 215, 0)
CONSOLIDATION_COLOUR = (255, 40, 40)
FOCAL_COLOUR = (40, 120, 255)
MIN_KEY_IMAGE_SIDE = 512


Tracking = Callable[[str, str], hd.sr.TrackingIdentifier]


def build_ct_outputs(
    finding: CtFinding, sources: Sequence[Dataset], context: OutputContext, model: ModelInfo
) -> list[Dataset]:
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources_for_outputs(sources)}
    missing = [uid for uid in finding.source_sop_instance_uids if uid not in by_uid]
    if missing:
        raise OutputError(f"finding refers to {len(missing)} instance(s) not among the sources")
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
        if finding.coronal_hu is not None:
            number = len(scs) + 1
            scs.append(
                build_coronal_overview(finding, datasets, sc_series, number, context, model, now)
            )
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

    assessment = finding.assessment
    features = assessment.features
    study_measurements = [
        *_feature_measurements(features),
        hd.sr.Measurement(name=SEVERITY_SCORE, value=q.severity_score, unit=UNIT_SCORE),
        *_lung_measurements(q.total),
    ]
    evaluations = [
        hd.sr.QualitativeEvaluation(
            name=CT_CATEGORY, value=CT_CATEGORY_VALUES[assessment.category.value]
        ),
        hd.sr.QualitativeEvaluation(name=BILATERAL, value=YES if features.bilateral else NO),
    ]
    groups: list[MeasurementGroup] = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking("study", "CT COVID-19 assessment"),
            algorithm_id=algorithm,
            finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)],
            measurements=study_measurements,
            qualitative_evaluations=evaluations,
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
    focal_ml = float(np.count_nonzero(finding.lesions == FOCAL_LABEL)) * _voxel_ml(finding)
    for segment, finding_type, volume_ml, label in (
        (GGO_SEGMENT, GROUND_GLASS_OPACITY, q.total.ggo_ml, "Ground-glass opacity"),
        (CONSOLIDATION_SEGMENT, CONSOLIDATION, q.total.consolidation_ml, "Consolidation"),
        (FOCAL_SEGMENT, MASS, focal_ml, "Nodule or mass (not involvement)"),
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
    evidence = [*datasets, seg]
    return measurement_sr(groups, PROCEDURE_CHEST_CT, datasets, evidence, context, model, now)


def _voxel_ml(finding: CtFinding) -> float:
    """Working-grid voxel volume, from the lung volume and the lung voxel count."""
    voxels = int(np.count_nonzero(finding.lungs))
    return finding.quantification.total.lung_ml / voxels if voxels else 0.0


def _feature_measurements(f: CtFeatures) -> list[hd.sr.Measurement]:
    rows = (
        (PERIPHERAL_SHARE, f.peripheral_share_percent, UNIT_PERCENT),
        (PERIPHERAL_EXPECTED, f.peripheral_expected_percent, UNIT_PERCENT),
        (LOWER_SHARE, f.lower_zone_share_percent, UNIT_PERCENT),
        (FOCI, f.foci, UNIT_COUNT),
        (FOCAL_LESIONS, f.focal_lesions, UNIT_COUNT),
        (FOCAL_DIAMETER, f.largest_focal_lesion_mm, UNIT_MM),
        (FOCAL_VOLUME, f.focal_lesion_volume_ml, UNIT_ML),
    )
    return [hd.sr.Measurement(name=name, value=_ml(value), unit=unit) for name, value, unit in rows]


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
    return secondary_capture(
        source,
        render_key_image(finding, source, k, model, unfinished_notice(context)),
        series,
        instance_number,
        instance_uid("ct-key", model, str(source.SOPInstanceUID)),
        patient_orientation(source),
        context,
        model,
        now,
    )


def build_coronal_overview(
    finding: CtFinding,
    datasets: Sequence[Dataset],
    series: SeriesIdentity,
    instance_number: int,
    context: OutputContext,
    model: ModelInfo,
    now: dt.datetime,
) -> hd.sc.SCImage:
    """A coronal reformat through the lungs' centre with lungs outlined and lesions tinted: the
    whole segmentation at a glance (missing lobes, leaks into the abdomen or neck)."""
    source = datasets[len(datasets) // 2]
    return secondary_capture(
        source,
        render_coronal_overview(finding, model, unfinished_notice(context)),
        series,
        instance_number,
        instance_uid("ct-coronal", model, source_key(datasets)),
        (patient_orientation(source)[0], "F"),  # rows run head to feet
        context,
        model,
        now,
    )


def render_coronal_overview(
    finding: CtFinding, model: ModelInfo, notices: Sequence[str] = ()
) -> np.ndarray:
    """Rows are slices (superior at the top), columns the source columns; pixels are stretched
    to their true aspect (slice spacing against column spacing).  ``notices`` go first."""
    assert finding.coronal_hu is not None
    row = finding.coronal_row
    # Superior slice first: slices ascend along the normal, which points up in HFS.
    order = np.arange(finding.coronal_hu.shape[0])
    if finding.slice_order_superior_last:
        order = order[::-1]
    hu = finding.coronal_hu[order].astype(np.float32)
    lungs = finding.lungs[order, row, :]
    lesions = finding.lesions[order, row, :]
    low, high = LUNG_WINDOW_HU
    gray = (np.clip((hu - low) / (high - low), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    rgb = render.gray_to_rgb(gray)
    rgb = render.tint_mask(rgb, lesions == GGO_LABEL, GGO_COLOUR)
    rgb = render.tint_mask(rgb, lesions == CONSOLIDATION_LABEL, CONSOLIDATION_COLOUR)
    rgb = render.tint_mask(rgb, lesions == FOCAL_LABEL, FOCAL_COLOUR)
    edge = (lungs > 0) & ~ndimage.binary_erosion(lungs > 0, border_value=1)
    rgb[edge] = render.LUNG_OUTLINE_COLOUR
    aspect = finding.slice_spacing_mm / max(finding.column_spacing_mm, 1e-6)
    width = max(MIN_KEY_IMAGE_SIDE, rgb.shape[1])
    scale = width / rgb.shape[1]
    height = max(1, round(rgb.shape[0] * aspect * scale))
    picture = np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.NEAREST))
    a = finding.assessment
    top = [
        *notices,
        "AI CT COVID-19 assessment (unverified): coronal overview",
        f"RSNA category: {a.category.value}",
        f"Involvement {a.features.involvement_percent:.1f}%, "
        f"{a.features.focal_lesions} nodule/mass (not counted)",
    ]
    bottom = [RESEARCH_NOTICE, "Cyan: lungs; yellow GGO, red consolidation, blue nodule/mass"]
    return render.burn_in_text(picture, top, bottom)


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


def render_key_image(
    finding: CtFinding, source: Dataset, k: int, model: ModelInfo, notices: Sequence[str] = ()
) -> np.ndarray:
    """The slice in the lung window, lesions tinted, the numbers and a notice burned in;
    ``notices`` (an unfinished study) go first."""
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
    rgb = render.tint_mask(rgb, lesions == FOCAL_LABEL, FOCAL_COLOUR)
    q = finding.quantification
    total = q.total
    top = [
        *notices,
        "AI CT COVID-19 assessment (unverified)",
        f"RSNA category: {finding.assessment.category.value}",
        f"Involvement: {total.involvement_percent:.1f}% "
        f"(R {q.right.involvement_percent:.1f}%, L {q.left.involvement_percent:.1f}%)",
        f"Lesions: {total.lesion_ml:.0f} mL of {total.lung_ml:.0f} mL lung",
        f"  GGO {total.ggo_share_percent:.0f}%, consolidation "
        f"{total.consolidation_share_percent:.0f}%",
        f"Severity: {q.severity_score}/25 (zones approximate lobes)",
    ]
    bottom = [
        RESEARCH_NOTICE,
        "Yellow: GGO, red: consolidation, blue: nodule/mass (not counted)",
        f"{model.name} {model.version}",
    ]
    return render.burn_in_text(rgb, top, bottom)

"""The one routing table: what intake accepts, what is routed, what each pipeline receives."""

from dataclasses import dataclass

import pytest
from pydicom import Dataset

from dicom_node.intake.scp import STORAGE_SOP_CLASSES, stow_accepted
from dicom_node.routing import DEFAULT_RULES, accepted_sop_classes, header_info, route

CR = "1.2.840.10008.5.1.4.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


@dataclass
class Inst:
    modality: str | None
    sop_class_uid: str
    body_part: str | None = "CHEST"
    image_type: str | None = "ORIGINAL\\PRIMARY"
    description: str | None = None
    view_position: str | None = None


def test_chest_radiograph_goes_to_xray() -> None:
    decision = route([Inst("CR", CR)])
    assert decision.pipeline == "xray"
    assert decision.instance_indexes == (0,)


def test_missing_body_part_falls_back_to_descriptions() -> None:
    assert (
        route([Inst("DX", "1.2.840.10008.5.1.4.1.1.1.1", None, description="THORAX PA")]).pipeline
        == "xray"
    )
    ignored = route([Inst("CR", CR, None, description="KNEE")])
    assert ignored.pipeline is None
    assert "body part missing is not chest" in ignored.reason


def test_chest_ct_goes_to_ct_without_its_localizer() -> None:
    instances = [Inst("CT", CT, image_type="ORIGINAL\\PRIMARY\\LOCALIZER")] + [
        Inst("CT", CT, image_type="ORIGINAL\\PRIMARY\\AXIAL") for _ in range(3)
    ]
    decision = route(instances)
    assert decision.pipeline == "ct"
    assert decision.instance_indexes == (1, 2, 3)


def test_other_studies_are_ignored_with_a_reason() -> None:
    head = route([Inst("CT", CT, "HEAD")])
    assert head.pipeline is None and "HEAD is not chest" in head.reason
    mr = route([Inst("MR", MR)])
    assert mr.pipeline is None and "MR" in mr.reason


ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.mark.parametrize("scout", ["LOCALIZER", "SCOUT", "TOPOGRAM"])
def test_every_spelling_of_a_scout_stays_out(scout: str) -> None:
    instances = [Inst("CT", CT, image_type=f"ORIGINAL\\PRIMARY\\{scout}")] + [
        Inst("CT", CT) for _ in range(2)
    ]
    assert route(instances).instance_indexes == (1, 2)
    only_scout = route(instances[:1])
    assert only_scout.pipeline is None
    assert f"image type {scout} is not analysed" in only_scout.reason


def test_lateral_views_stay_out_and_a_lateral_study_says_why() -> None:
    study = [Inst("DX", DX, view_position="LL"), Inst("DX", DX, view_position="PA")]
    assert route(study).instance_indexes == (1,)
    lateral = route(study[:1])
    assert lateral.pipeline is None and "lateral or decubitus view (LL)" in lateral.reason


def test_enhanced_ct_is_neither_accepted_nor_routed() -> None:
    """The CT pipeline stacks single-frame slices: what intake takes is what it can analyse."""
    assert ENHANCED_CT not in accepted_sop_classes()
    decision = route([Inst("CT", ENHANCED_CT)])
    assert decision.pipeline is None and "is not handled by the ct pipeline" in decision.reason


def test_intake_accepts_exactly_the_table() -> None:
    table = {uid for rule in DEFAULT_RULES for uid in rule.sop_classes}
    assert {str(uid) for uid in STORAGE_SOP_CLASSES} == table
    assert stow_accepted().sop_classes == frozenset(table)


def test_header_info_reads_a_dataset_as_the_job_log_records_it() -> None:
    ds = Dataset()
    ds.Modality = "DX"
    ds.SOPClassUID = DX
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ViewPosition = "LL"
    ds.SeriesDescription = "Thorax\x07 lat"
    info = header_info(ds)
    assert (info.modality, info.view_position, info.body_part) == ("DX", "LL", None)
    assert info.image_type == "ORIGINAL\\PRIMARY"
    assert info.description == "Thorax lat"  # control characters dropped
    assert route([info]).pipeline is None  # lateral

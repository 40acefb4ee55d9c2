from dataclasses import dataclass

from dicom_node.routing import route

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

"""Coded concepts used in our outputs, in one place.

Standard codes (SNOMED CT ``SCT``, DICOM ``DCM``, UCUM) where one exists; otherwise codes of
our private scheme ``99DCMNODE`` (PS3.3 8.2: designators starting with "99" are private),
declared in each object's Coding Scheme Identification Sequence.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

PRIVATE_SCHEME = "99DCMNODE"
PRIVATE_SCHEME_ITEM = CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME,
    name="dicom-node local codes",
    responsible_organization="dicom-node project",
)

# X-ray classifier classes -> finding concepts.
FINDING_BY_CLASS: dict[str, CodedConcept] = {
    "covid": CodedConcept("840539006", "SCT", "COVID-19"),
    "normal": CodedConcept("17621005", "SCT", "Normal"),
    "pneumonia_bac": CodedConcept("53084003", "SCT", "Bacterial pneumonia"),
}
CLASS_DISPLAY_NAME: dict[str, str] = {
    "covid": "COVID-19",
    "normal": "Normal",
    "pneumonia_bac": "Bacterial pneumonia",
}


def probability_concept(class_key: str) -> CodedConcept:
    """Measurement name for one class probability, e.g. "Probability of COVID-19"."""
    return CodedConcept(
        f"P-{class_key.upper()}", PRIVATE_SCHEME, f"Probability of {CLASS_DISPLAY_NAME[class_key]}"
    )


ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence  # (123110, DCM)
REPORT_TITLE = codes.cid7021.ImagingMeasurementReport  # (126000, DCM)
LUNG = codes.SCT.Lung  # (39607008, SCT)
PROCEDURE_CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
PROCEDURE_CHEST_CT = CodedConcept("169069000", "SCT", "Computed tomography of chest")

UNIT_NONE = CodedConcept("1", "UCUM", "no units")
UNIT_PERCENT = CodedConcept("%", "UCUM", "percent")
UNIT_ML = CodedConcept("ml", "UCUM", "milliliter")
UNIT_SCORE = CodedConcept("{score}", "UCUM", "score")


def _private(code: str, meaning: str) -> CodedConcept:
    return CodedConcept(code, PRIVATE_SCHEME, meaning)


# CT SR measurements without a standard code.
LUNG_VOLUME = _private("CT-LUNG-ML", "Lung volume")
LESION_VOLUME = _private("CT-LESION-ML", "Lesion volume (GGO and consolidation)")
GGO_VOLUME = _private("CT-GGO-ML", "Ground-glass opacity volume")
CONSOLIDATION_VOLUME = _private("CT-CONS-ML", "Consolidation volume")
INVOLVEMENT = _private("CT-INVOLVED", "Lung involvement (lesion volume / lung volume)")
GGO_SHARE = _private("CT-GGO-SHARE", "Ground-glass share of lesion volume")
CONSOLIDATION_SHARE = _private("CT-CONS-SHARE", "Consolidation share of lesion volume")
SEVERITY_SCORE = _private("CT-SEVERITY", "CT severity score 0-25 (zones approximating lobes)")
ZONE_SCORE = _private("CT-ZONE-SCORE", "Zone severity score 0-5")

# CT SEG segment categories and types (also the SR's volumetric finding types).
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure  # (91723000, SCT)
ABNORMAL_STRUCTURE = codes.SCT.MorphologicallyAbnormalStructure  # (49755003, SCT)
RIGHT_LUNG = CodedConcept("3341006", "SCT", "Right lung")
LEFT_LUNG = CodedConcept("44029006", "SCT", "Left lung")
GROUND_GLASS_OPACITY = codes.DCM.GroundGlassOpacity  # (112120, DCM)
CONSOLIDATION = CodedConcept("95436008", "SCT", "Lung consolidation")
MASS = CodedConcept("4147007", "SCT", "Mass")

# CT COVID-19 assessment: the RSNA consensus category and the features behind it.
CT_CATEGORY = _private("CT-RSNA-CAT", "RSNA COVID-19 CT category")
CT_CATEGORY_VALUES: dict[str, CodedConcept] = {
    "typical": _private("CT-RSNA-TYP", "Typical appearance for COVID-19 pneumonia"),
    "indeterminate": _private("CT-RSNA-IND", "Indeterminate appearance for COVID-19 pneumonia"),
    "atypical": _private("CT-RSNA-ATY", "Atypical appearance for COVID-19 pneumonia"),
    "negative": _private("CT-RSNA-NEG", "Negative for pneumonia"),
}
BILATERAL = _private("CT-BILATERAL", "Bilateral involvement")
YES = codes.SCT.Yes
NO = codes.SCT.No
PERIPHERAL_SHARE = _private("CT-PERIPH-SHARE", "Lesion share in the outer third of the lung")
PERIPHERAL_EXPECTED = _private("CT-PERIPH-LUNG", "Lung volume share in the outer third")
LOWER_SHARE = _private("CT-LOWER-SHARE", "Lesion share in the lower half of the lung volume")
FOCI = _private("CT-FOCI", "GGO/consolidation foci of 1 mL or more")
FOCAL_LESIONS = _private("CT-FOCAL-N", "Compact solid lesions (nodule or mass), not counted")
FOCAL_DIAMETER = _private("CT-FOCAL-DIAM", "Largest compact solid lesion diameter")
FOCAL_VOLUME = _private("CT-FOCAL-ML", "Compact solid lesion volume")
UNIT_MM = CodedConcept("mm", "UCUM", "millimeter")
UNIT_COUNT = CodedConcept("{count}", "UCUM", "count")

# X-ray COVID-19 severity: the two scores of Cohen et al. (Cureus 2020) and the level made from
# the extent (``dicom_node.pipelines.xray.severity``).
GEOGRAPHIC_EXTENT = _private("CXR-GEO-EXTENT", "Geographic extent score 0-8")
OPACITY_SCORE = _private("CXR-OPACITY", "Opacity score 0-6")
SEVERITY_LEVEL = _private("CXR-SEV-LEVEL", "COVID-19 severity level")
SEVERITY_LEVEL_VALUES: tuple[CodedConcept, ...] = (
    _private("CXR-SEV-0", "Level 0: no or minimal involvement"),
    _private("CXR-SEV-1", "Level 1: mild"),
    _private("CXR-SEV-2", "Level 2: moderate"),
    _private("CXR-SEV-3", "Level 3: severe"),
)

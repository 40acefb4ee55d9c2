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


FINDING = codes.DCM.Finding  # (121071, DCM)
PROBABILITY = codes.DCM.Probability  # (122157, DCM)
ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence  # (123110, DCM)
REPORT_TITLE = codes.cid7021.ImagingMeasurementReport  # (126000, DCM)
LUNG = codes.SCT.Lung  # (39607008, SCT)
CLINICAL_FINDING = CodedConcept("404684003", "SCT", "Clinical finding")
PROCEDURE_CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
PROCEDURE_CHEST_CT = CodedConcept("169069000", "SCT", "Computed tomography of chest")

UNIT_NONE = CodedConcept("1", "UCUM", "no units")
UNIT_PERCENT = CodedConcept("%", "UCUM", "percent")
UNIT_ML = CodedConcept("ml", "UCUM", "milliliter")
UNIT_HU = CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")

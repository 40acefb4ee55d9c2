"""dicom-node: an AI modality on the DICOM network (research use only, not for diagnosis)."""

__version__ = "0.1.0"

RESEARCH_NOTICE = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"

"""Job errors are one line, name the step and the instance, and hold no patient data."""

from __future__ import annotations

from pydicom import Dataset

from dicom_node.worker import redact


def test_patient_values_are_cut_out_of_a_job_error() -> None:
    source = Dataset()
    source.PatientName = "Doe^Jane^Q"
    source.PatientID = "MRN-778899"
    source.PatientBirthDate = "19700101"
    message = "ValueError: bad PN 'Doe^Jane^Q' (MRN-778899, born 19700101)\nsecond line Jane"
    text = redact(message, [source])
    assert "Doe" not in text and "Jane" not in text
    assert "778899" not in text and "19700101" not in text
    assert "\n" not in text and text.startswith("ValueError: bad PN")


def test_long_errors_are_bounded() -> None:
    assert len(redact("x" * 10_000, [])) < 600

"""CT series selection on the shared data set's real TCIA slices."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset

from dicom_node.errors import NotAnalysable
from dicom_node.pipelines.ct.series import select_series
from dicom_node.pixels import hu_image


def test_real_tcia_single_slices_are_not_a_volume(shared_data: Path) -> None:
    studies: dict[str, list[Dataset]] = defaultdict(list)
    for path in sorted((shared_data / "ct_dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        studies[str(ds.StudyInstanceUID)].append(ds)
    assert len(studies) >= 8
    for datasets in studies.values():
        with pytest.raises(NotAnalysable, match="single slice is not a volume") as info:
            select_series(datasets)
        for item in datasets:
            assert str(item.PatientID) not in str(info.value)
        # Every slice still decodes to plausible HU (air around -1000, tissue above).
        hu = hu_image(datasets[0])
        assert hu.min() <= -900 and hu.max() >= 0

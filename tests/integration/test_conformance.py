"""``dciodvfy`` (Debian dicom3tools) finds no errors in what we write: phantom slices and the
X-ray and CT result objects, built in process (no servers)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset

from dicom_node.domain import ModelInfo, OutputContext
from dicom_node.outputs.xray import build_xray_outputs
from dicom_node.registry import PipelineRegistry
from tests.support.factories import chest_cr, synthetic_xray_finding
from tests.support.synthetic import write_phantom_series
from tests.support.validate import dciodvfy_errors

XRAY_MODEL = ModelInfo("xray_test", "9.9.9", ("covid", "normal", "pneumonia_bac"))


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ...]:
    directory = tmp_path_factory.mktemp("phantom")
    return write_phantom_series(directory, n_slices=48, size=128, seed=11).files


@pytest.fixture(scope="module")
def xray_outputs() -> list[Dataset]:
    source = chest_cr()
    return build_xray_outputs(synthetic_xray_finding(source), [source], OutputContext(), XRAY_MODEL)


@pytest.fixture(scope="module")
def unfinished_xray_outputs() -> list[Dataset]:
    """Of a study analysed before its sender finished: SR Completion Flag PARTIAL."""
    source = chest_cr()
    context = OutputContext(unfinished=True)
    return build_xray_outputs(synthetic_xray_finding(source), [source], context, XRAY_MODEL)


@pytest.fixture(scope="module")
def ct_outputs(
    tmp_path_factory: pytest.TempPathFactory, phantom_files: tuple[Path, ...]
) -> list[Dataset]:
    loaded = PipelineRegistry(tmp_path_factory.mktemp("models")).get("ct")
    sources = [pydicom.dcmread(path) for path in phantom_files]
    return loaded.build_outputs(loaded.pipeline.run(sources), sources, OutputContext())


def test_phantom_slices(phantom_files: tuple[Path, ...]) -> None:
    assert dciodvfy_errors(phantom_files[0]) == []


@pytest.mark.parametrize("index", [0, 1], ids=["sr", "sc"])
def test_xray_outputs(xray_outputs: list[Dataset], index: int) -> None:
    assert dciodvfy_errors(xray_outputs[index]) == []


@pytest.mark.parametrize("index", [0, 1], ids=["sr", "sc"])
def test_unfinished_xray_outputs(unfinished_xray_outputs: list[Dataset], index: int) -> None:
    assert dciodvfy_errors(unfinished_xray_outputs[index]) == []


@pytest.mark.parametrize("index", range(5), ids=["sr", "seg", "sc1", "sc2", "sc3"])
def test_ct_outputs(ct_outputs: list[Dataset], index: int) -> None:
    assert dciodvfy_errors(ct_outputs[index]) == []


def test_outputs_of_an_anonymised_source(tmp_path: Path) -> None:
    """Type 2 attributes absent from the source are present and empty in the outputs."""
    source = chest_cr(new_uids=True)
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
        delattr(source, keyword)
    del source.ReferringPhysicianName
    outputs = build_xray_outputs(
        synthetic_xray_finding(source), [source], OutputContext(), XRAY_MODEL
    )
    for ds in outputs:
        assert dciodvfy_errors(ds) == []

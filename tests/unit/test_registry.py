"""The registry pairs each pipeline with its output builder and loads each once."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydicom import Dataset

import dicom_node
from dicom_node.domain import ModelInfo, OutputContext
from dicom_node.pipelines.base import Pipeline
from dicom_node.registry import BUILTIN_PIPELINES, LoadedPipeline, PipelineRegistry

PACKAGE = Path(dicom_node.__file__).parent


class _Echo(Pipeline[list[str], list[str], list[str]]):
    name = "echo"

    def __init__(self) -> None:
        self.model_info = ModelInfo("echo_model", "1.2.3")
        self.warmed = 0

    def preprocess(self, sources: Sequence[Dataset]) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in sources]

    def predict(self, prepared: list[str]) -> list[str]:
        return prepared

    def postprocess(self, raw: list[str], prepared: list[str]) -> list[str]:
        return raw

    def warm_up(self) -> None:
        self.warmed += 1


def _builder(
    finding: list[str], sources: Sequence[Dataset], context: OutputContext, model: ModelInfo
) -> list[Dataset]:
    ds = Dataset()
    ds.SeriesDescription = f"{model.name} {model.version} v{context.result_version}"
    ds.ImageComments = ",".join(finding)
    return [ds]


def test_factories_are_loaded_once_and_paired_with_their_builder() -> None:
    built: list[LoadedPipeline] = []

    def factory() -> LoadedPipeline:
        built.append(LoadedPipeline("echo", _Echo(), _builder))
        return built[-1]

    registry = PipelineRegistry(factories={"echo": factory})
    assert registry.names() == ["ct", "echo", "xray"]
    assert registry.loaded() == []
    loaded = registry.get("echo")
    assert registry.get("echo") is loaded and len(built) == 1
    assert registry.loaded() == ["echo"]

    source = Dataset()
    source.SOPInstanceUID = "1.2.3.4"
    finding = loaded.pipeline.run([source])
    (out,) = loaded.build_outputs(finding, [source], OutputContext(result_version=2))
    assert out.SeriesDescription == "echo_model 1.2.3 v2"  # the pipeline's model identity
    assert out.ImageComments == "1.2.3.4"

    registry.warm_up("echo")
    assert isinstance(loaded.pipeline, _Echo) and loaded.pipeline.warmed == 1


def test_unknown_pipeline() -> None:
    with pytest.raises(KeyError, match="nope"):
        PipelineRegistry().get("nope")


def test_builtins_are_factories_for_the_routed_pipelines() -> None:
    from dicom_node.routing import DEFAULT_RULES

    assert set(BUILTIN_PIPELINES) == {rule.pipeline for rule in DEFAULT_RULES}
    assert all(callable(factory) for factory in BUILTIN_PIPELINES.values())


MISMATCHED_PAIRING = """
from pathlib import Path
from dicom_node.domain import CtFinding
from dicom_node.outputs.xray import build_xray_outputs
from dicom_node.pipelines.ct.pipeline import CtPipeline
from dicom_node.registry import LoadedPipeline

def pairing(models: Path) -> LoadedPipeline[CtFinding]:
    return LoadedPipeline("ct", CtPipeline.load(models), build_xray_outputs)
"""


@pytest.mark.slow
def test_mypy_refuses_a_builder_for_another_finding(tmp_path: Path) -> None:
    """The seam is typed: pairing the CT pipeline with the X-ray builder is a type error, and
    the shipped pairings are not."""
    from mypy import api

    wrong = tmp_path / "wrong_pairing.py"
    wrong.write_text(MISMATCHED_PAIRING)
    registry = PACKAGE / "registry.py"
    args = ["--strict", "--follow-imports=silent", "--ignore-missing-imports", "--no-incremental"]
    out, _, status = api.run([*args, str(wrong)])
    assert status == 1 and 'Argument 3 to "LoadedPipeline"' in out and "XrayFinding" in out, out
    out, _, status = api.run([*args, str(registry)])
    assert status == 0, out


def _our_imports(path: Path) -> set[str]:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    return {name for name in imported if name.startswith("dicom_node")}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("pipelines", "dicom_node.outputs"), ("outputs", "dicom_node.pipelines")],
)
def test_pipelines_and_outputs_never_import_each_other(package: str, forbidden: str) -> None:
    for path in (PACKAGE / package).rglob("*.py"):
        bad = {m for m in _our_imports(path) if m.startswith(forbidden)}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_domain_and_pixels_import_nothing_of_ours() -> None:
    assert _our_imports(PACKAGE / "domain.py") == set()
    assert _our_imports(PACKAGE / "pixels.py") == set()

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


def test_builtins_name_pipelines_and_builders_that_exist() -> None:
    for pipeline_path, builder_path in BUILTIN_PIPELINES.values():
        for path, package in ((pipeline_path, "pipelines"), (builder_path, "outputs")):
            module, attribute = path.split(":")
            assert module.startswith(f"dicom_node.{package}.")
            file = PACKAGE.parent / (module.replace(".", "/") + ".py")
            tree = ast.parse(file.read_text())
            names = {n.name for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}
            assert attribute in names


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

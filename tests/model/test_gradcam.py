"""Grad-CAM: layer choice (never a 1x1 map), shapes, and that it points at the evidence."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from dicom_node.errors import GradCamError
from dicom_node.pipelines.xray.gradcam import (
    GradCam,
    hot_region,
    mass_inside,
    resample,
    resample_into,
    select_gradcam_layer,
)


def _blob_model(size: int = 32) -> keras.Model:
    """Class 0's logit is the mean brightness seen through an identity 1x1 conv: Grad-CAM for
    class 0 must light up exactly where the image is bright."""
    inputs = keras.Input((size, size, 1))
    features = keras.layers.Conv2D(1, 1, use_bias=False, name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    logits = keras.layers.Dense(2, name="logits")(pooled)
    probs = keras.layers.Activation("softmax")(logits)
    model = keras.Model(inputs, probs)
    model.get_layer("features").set_weights([np.ones((1, 1, 1, 1), np.float32)])
    model.get_layer("logits").set_weights(
        [np.array([[10.0, -10.0]], np.float32), np.zeros(2, np.float32)]
    )
    return model


def test_layer_choice_skips_1x1_maps() -> None:
    model = keras.applications.MobileNetV3Small(
        input_shape=(96, 96, 3),
        weights=None,
        include_top=True,
        classes=3,
        include_preprocessing=False,
    )
    last_4d = [layer for layer in model.layers if len(layer.output.shape) == 4][-1]
    assert tuple(last_4d.output.shape[1:3]) == (1, 1)  # the trap from docs/notes.md
    name = select_gradcam_layer(model)
    height, width = model.get_layer(name).output.shape[1:3]
    assert height > 1 and width > 1


def test_layer_choice_for_the_compact_model_and_applications() -> None:
    from training.legacy.models import build_model, gradcam_layer_name

    compact = build_model("compact", 96, 3)
    assert select_gradcam_layer(compact) == gradcam_layer_name("compact") == "gradcam_features"
    assert tuple(compact.get_layer("gradcam_features").output.shape[1:3]) == (6, 6)
    resnet = build_model("resnet50", 64, 3)
    assert select_gradcam_layer(resnet) == gradcam_layer_name("resnet50")


def test_no_spatial_layer_is_an_error() -> None:
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(GradCamError):
        select_gradcam_layer(model)
    image_model = _blob_model()
    with pytest.raises(GradCamError):
        GradCam(image_model, layer_name="logits")


def test_cam_points_at_the_bright_region_and_the_polygon_encloses_it() -> None:
    size = 32
    image = np.zeros((2, size, size, 1), np.float32)
    image[0, 2:10, 20:30] = 1.0  # top right
    image[1, 22:30, 3:12] = 1.0  # bottom left
    cam = GradCam(_blob_model(size), layer_name="features", temperature=2.0)
    result = cam(image)
    assert result.probabilities.shape == (2, 2)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert result.cams.shape == (2, size, size)
    assert result.cams.max() == pytest.approx(1.0) and result.cams.min() >= 0.0

    rows, cols = 300, 200  # a non-square "source image"
    heat = resample(result.cams[0], rows, cols)
    assert heat.shape == (rows, cols)
    peak_row, peak_col = np.unravel_index(np.argmax(heat), heat.shape)
    assert peak_row < rows / 3 and peak_col > cols * 0.6

    polygon = hot_region(result.cams[0], rows, cols)
    assert polygon.shape[1] == 2 and len(polygon) >= 4
    np.testing.assert_array_equal(polygon[0], polygon[-1])  # closed
    xs, ys = polygon[:, 0], polygon[:, 1]  # (column, row)
    assert xs.min() >= 0 and xs.max() <= cols - 1 and ys.min() >= 0 and ys.max() <= rows - 1
    # The blob spans rows 2..10 and columns 20..30 of 32: scaled to the source image.
    assert ys.min() < 2.5 / size * rows and ys.max() > 9 / size * rows
    assert xs.min() < 20.5 / size * cols and xs.max() > 29 / size * cols
    assert ys.max() < 0.5 * rows  # and not the bottom-left blob of the other image

    other = hot_region(result.cams[1], rows, cols)
    assert other[:, 1].mean() > rows / 2 and other[:, 0].mean() < cols / 2


def test_empty_cam_outlines_the_whole_image() -> None:
    polygon = hot_region(np.zeros((7, 7), np.float32), 100, 80)
    np.testing.assert_array_equal(polygon[0], polygon[-1])
    assert polygon[:, 0].max() == 79 and polygon[:, 1].max() == 99


def test_pooled_features_are_the_layer_mean_from_the_same_pass() -> None:
    size = 16
    image = np.zeros((2, size, size, 1), np.float32)
    image[0, :4, :4] = 1.0  # mean brightness 1/16
    image[1] = 0.5
    cam = GradCam(_blob_model(size), layer_name="features")
    result = cam(image)
    assert cam.feature_channels == 1
    assert result.features.shape == (2, 1)
    np.testing.assert_allclose(result.features[:, 0], [1 / 16, 0.5], rtol=1e-5)


def test_cam_over_a_crop_box_is_zero_outside_it() -> None:
    cam = np.zeros((4, 4), np.float32)
    cam[1:3, 1:3] = 1.0
    box = (20, 60, 10, 90)  # rows 20..60, columns 10..90 of a 100 x 120 image
    heat = resample_into(cam, (100, 120), box)
    assert heat.shape == (100, 120)
    assert not heat[:20].any() and not heat[60:].any()
    assert not heat[:, :10].any() and not heat[:, 90:].any()
    peak_row, peak_col = np.unravel_index(np.argmax(heat), heat.shape)
    assert 30 <= peak_row <= 50 and 30 <= peak_col <= 70
    polygon = hot_region(cam, 100, 120, box=box)
    xs, ys = polygon[:, 0], polygon[:, 1]
    assert xs.min() >= 10 and xs.max() <= 89 and ys.min() >= 20 and ys.max() <= 59


def test_hot_region_restricted_to_a_mask_lies_on_it() -> None:
    from matplotlib.path import Path as PolygonPath

    cam = np.zeros((8, 8), np.float32)
    cam[2:6, 1:7] = 1.0
    cam[3:5, 3:5] = 2.0  # the peak sits between the "lungs"
    cam /= cam.max()
    rows, cols = 160, 160
    mask = np.zeros((rows, cols), bool)
    mask[30:130, 10:60] = True  # left field
    mask[30:130, 100:150] = True  # right field
    polygon = hot_region(cam, rows, cols, mask=mask)
    yy, xx = np.mgrid[0:rows:2, 0:cols:2]
    inside = PolygonPath(polygon).contains_points(np.column_stack([xx.ravel(), yy.ravel()]))
    inside = inside.reshape(yy.shape)
    assert inside.any() and mask[::2, ::2][inside].mean() > 0.9
    unmasked = hot_region(cam, rows, cols)
    assert 60 < unmasked[:, 0].mean() < 100  # without the mask: the gap between them
    heat = resample_into(cam, (rows, cols))
    share = mass_inside(heat, mask)
    assert 0.0 < share < 1.0
    assert share == pytest.approx(heat[mask].sum() / heat.sum())
    assert mass_inside(np.zeros((4, 4), np.float32), np.ones((4, 4), bool)) == 0.0

"""Train the lung-field segmentation model (``models/lung_segmentation/<version>/``).

    python -m training.train_lungseg --out models/lung_segmentation/1.0.0 [--data ../shared/data]

A small U-Net from scratch (standard Keras layers only), fitted on the data set's lungVAE lung
masks of the train split with strong augmentation, plus negative examples with empty masks (CT
slices of the train split, blank/constant/noise/gradient and random-shape images) so that it
finds no lungs in what is not a frontal chest radiograph.  The threshold and the epoch are chosen
on the val masks; the test masks are used once, for the reported Dice.  The ``problem`` rules'
inputs are measured on train/val radiographs of every source and on negatives for the card.
The hyper-parameters are in ``training/configs/lung_segmentation.toml`` (``--config``), recorded
in the card.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import draw, transform

from dicom_node.pipelines.model_card import (
    Architecture,
    DataInfo,
    DecisionRule,
    InputSpec,
    ModelCard,
)
from dicom_node.pipelines.xray import lung_fields
from dicom_node.pipelines.xray.lung_fields import MODEL_NAME, segmentation_input
from dicom_node.pipelines.xray.preprocessing import read_image, resize_square, robust_stretch
from training import card, config
from training.config import LungSegConfig
from training.data import DEFAULT_DATA_DIR, Record, manifest_sha256, read_manifest, split_counts
from training.provenance import command_line, log, machine, versions

__all__ = [
    "MASKS",
    "MASK_LICENCE",
    "build_card",
    "build_unet",
    "choose_threshold",
    "dice",
    "load_masked",
    "main",
    "measure_rules",
    "synthetic_negative",
]

MASKS = Path("annotations/lung_masks")
MASK_LICENCE = "CC BY-NC-SA 4.0 (the ieee fork's 'other documents', per the data README)"

# scikit-image is not annotated: its four functions used here, typed by hand.
_AffineTransform = cast(Callable[..., Any], transform.AffineTransform)
_warp = cast(Callable[..., np.ndarray], transform.warp)
_ellipse = cast(Callable[..., tuple[np.ndarray, np.ndarray]], draw.ellipse)
_polygon = cast(Callable[..., tuple[np.ndarray, np.ndarray]], draw.polygon)


# -- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskedImage:
    record: Record
    display: np.ndarray  # source resolution, for Dice at source pixels
    mask: np.ndarray  # bool, source resolution


def load_masked(data_dir: Path, records: Sequence[Record], split: str) -> list[MaskedImage]:
    by_path = {r.path: r for r in records}
    items = []
    for path in sorted((data_dir / MASKS).rglob("*.png")):
        record = by_path[str(path.relative_to(data_dir / MASKS))]
        if record.split == split:
            display = read_image(data_dir / record.path).display
            mask = np.asarray(Image.open(path).convert("L")) >= 128
            items.append(MaskedImage(record, display, mask))
    return items


def cache_size(size: int) -> int:
    """Images are kept at twice the input size and warped down from there."""
    return 2 * size


def cache_square(display: np.ndarray, size: int) -> np.ndarray:
    return np.array(resize_square(display, cache_size(size)))  # writable, for skimage


# -- augmentation (numpy/skimage, seeded per sample) ----------------------------------------


def random_affine(rng: np.random.Generator, size: int) -> transform.AffineTransform:
    """Rotation, zoom, aspect change, shift and flip, about the image centre (output pixels)."""
    zoom = rng.uniform(0.75, 1.25)
    aspect = np.exp(rng.uniform(-0.2, 0.2))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    centre = np.array([size / 2, size / 2])
    shift = rng.uniform(-0.1, 0.1, size=2) * size
    to_centre = _AffineTransform(translation=-centre)
    shape = _AffineTransform(
        scale=(flip * zoom * aspect, zoom / aspect), rotation=np.deg2rad(rng.uniform(-15, 15))
    )
    back = _AffineTransform(translation=centre + shift)
    return cast(transform.AffineTransform, to_centre + shape + back)


def warp(
    image: np.ndarray, tf_out: transform.AffineTransform, cval: float, size: int
) -> np.ndarray:
    """``image`` (a cache square) warped to the ``size`` square input by ``tf_out``."""
    down = _AffineTransform(scale=size / image.shape[0])
    warped = _warp(image, (down + tf_out).inverse, output_shape=(size, size), order=1, cval=cval)
    return warped.astype(np.float32)


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma, blur, down-up sampling and rectangles (labels, markers) before the stretch."""
    size = image.shape[0]
    image = np.clip(image, 0.0, 1.0) ** np.exp(rng.uniform(-0.5, 0.5))
    if rng.random() < 0.3:
        image = ndimage.gaussian_filter(image, rng.uniform(0.5, 1.5))
    if rng.random() < 0.3:
        factor = rng.uniform(1.5, 4.0)
        small = resize_square(image, max(8, int(size / factor)))
        image = resize_square(small, size).copy()  # PIL arrays are read-only
    for _ in range(rng.integers(0, 4)):
        h, w = rng.integers(3, size // 6, size=2)
        r, c = rng.integers(0, size - h), rng.integers(0, size - w)
        image[r : r + h, c : c + w] = rng.uniform(0, 1)
    return image


def finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The node's contrast stretch, then contrast jitter and noise of the input itself."""
    image = robust_stretch(image)
    image = (image - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.4:
        image = image + rng.normal(0, rng.uniform(0.01, 0.06), image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def augment(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, size: int
) -> tuple[Any, Any]:
    affine = random_affine(rng, size)
    cval = float(rng.choice([0.0, 1.0, image.mean()]))
    warped = warp(image, affine, cval, size)
    target = warp(mask.astype(np.float32), affine, 0.0, size) >= 0.5
    return finish(photometric(warped, rng), rng), target


def synthetic_negative(rng: np.random.Generator, side: int) -> np.ndarray:
    """Blank, constant, noise, gradient, smooth-noise or random-shape image (no lungs), of a
    cache square's ``side``."""
    kind = rng.integers(0, 6)
    grid: np.ndarray = np.mgrid[0:side, 0:side] / side
    rows, cols = grid
    if kind == 0:
        return np.full((side, side), rng.uniform(0, 1), np.float32)
    if kind == 1:
        return rng.uniform(0, 1, (side, side)).astype(np.float32)
    if kind == 2:
        angle = rng.uniform(0, 2 * np.pi)
        return np.asarray(np.cos(angle) * rows + np.sin(angle) * cols, np.float32)
    if kind == 3:
        radius = np.hypot(rows - rng.uniform(0, 1), cols - rng.uniform(0, 1))
        return np.asarray(radius, np.float32)
    if kind == 4:
        noise = rng.normal(0, 1, (side, side))
        return np.asarray(ndimage.gaussian_filter(noise, rng.uniform(3, 20)), np.float32)
    image = np.full((side, side), rng.uniform(0, 1), np.float32)
    for _ in range(rng.integers(1, 8)):
        if rng.random() < 0.5:
            r, c = rng.uniform(0, side, 2)
            rr, cc = _ellipse(r, c, *rng.uniform(5, side / 3, 2), image.shape)
        else:
            rr, cc = _polygon(*rng.uniform(0, side, (2, rng.integers(3, 8))), image.shape)
        image[rr, cc] = rng.uniform(0, 1)
    return image


class Batches:
    """A keras PyDataset of augmented batches; batch ``i`` of epoch ``e`` is seeded by (e, i)."""

    def __init__(self, positives: Any, masks: Any, ct: Any, cfg: LungSegConfig) -> None:
        import keras

        class _Data(keras.utils.PyDataset):  # type: ignore[misc]
            def __len__(inner) -> int:
                return cfg.steps_per_epoch

            def __getitem__(inner, index: int) -> tuple[np.ndarray, np.ndarray]:
                return self.batch(index)

            def on_epoch_end(inner) -> None:
                self.epoch += 1

        self.positives, self.masks, self.ct, self.cfg = positives, masks, ct, cfg
        self.epoch = 0
        self.dataset = _Data()

    def batch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        size, side = cfg.input_size, cache_size(cfg.input_size)
        rng = np.random.default_rng([cfg.seed, self.epoch, index])
        xs, ys = [], []
        empty = np.zeros((side, side), bool)
        for _ in range(cfg.batch_size):
            draw_kind = rng.random()
            if draw_kind < cfg.positive_fraction:
                i = rng.integers(len(self.positives))
                x, y = augment(self.positives[i], self.masks[i], rng, size)
            elif draw_kind < cfg.positive_fraction + cfg.ct_fraction:
                x, y = augment(self.ct[rng.integers(len(self.ct))], empty, rng, size)
            else:
                x, y = augment(synthetic_negative(rng, side), empty, rng, size)
            xs.append(x)
            ys.append(y)
        return np.stack(xs)[..., None], np.stack(ys)[..., None].astype(np.float32)


# -- model -----------------------------------------------------------------------------------


def build_unet(filters: Sequence[int], size: int) -> Any:
    """U-Net: conv-BN-ReLU pairs, max-pool down, bilinear up + skip concatenation."""
    import keras
    from keras import layers

    def block(x: Any, n: int, name: str) -> Any:
        for k in (1, 2):
            x = layers.Conv2D(n, 3, padding="same", use_bias=False, name=f"{name}_conv{k}")(x)
            x = layers.BatchNormalization(name=f"{name}_bn{k}")(x)
            x = layers.ReLU(name=f"{name}_relu{k}")(x)
        return x

    inputs = keras.Input((size, size, 1), name="image")
    x, skips = inputs, []
    for level, n in enumerate(filters[:-1]):
        x = block(x, n, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(name=f"pool{level}")(x)
    x = block(x, filters[-1], "bottom")
    for level in reversed(range(len(filters) - 1)):
        x = layers.UpSampling2D(interpolation="bilinear", name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = block(x, filters[level], f"dec{level}")
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="lung_probability")(x)
    return keras.Model(inputs, outputs, name="lung_unet")


def bce_dice_loss(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy plus soft Dice over the whole batch (defined for empty masks)."""
    import keras
    from keras import ops

    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
    overlap = ops.sum(y_true * y_pred)
    dice = (2 * overlap + 1.0) / (ops.sum(y_true) + ops.sum(y_pred) + 1.0)
    return bce + (1.0 - dice)


# -- evaluation ------------------------------------------------------------------------------


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def summary(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {
        "n": len(v),
        "mean": round(float(v.mean()), 4),
        "median": round(float(np.median(v)), 4),
        "min": round(float(v.min()), 4),
    }


def predict(model: Any, displays: Sequence[np.ndarray]) -> np.ndarray:
    size = int(model.inputs[0].shape[1])
    batch = np.stack([segmentation_input(d, size) for d in displays])
    return np.asarray(model.predict(batch, batch_size=16, verbose=0))[..., 0]


def source_dice(probs: np.ndarray, items: Sequence[MaskedImage], threshold: float) -> list[float]:
    """Dice at source pixels of the node's post-processed mask."""
    return [
        dice(lung_fields.lung_fields_from_probabilities(p, m.mask.shape, threshold).mask, m.mask)
        for p, m in zip(probs, items, strict=True)
    ]


def choose_threshold(
    probs: np.ndarray, items: Sequence[MaskedImage], thresholds: Sequence[float]
) -> float:
    scores = [float(np.mean(source_dice(probs, items, float(t)))) for t in thresholds]
    return float(thresholds[int(np.argmax(scores))])


class ValDice:
    """Keras callback: mean val Dice at input resolution each epoch; keeps the best weights."""

    def __init__(self, inputs: np.ndarray, masks: np.ndarray) -> None:
        import keras

        outer = self

        class _Callback(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                probs = self.model.predict(inputs, verbose=0)[..., 0] >= 0.5
                score = float(np.mean([dice(p, m) for p, m in zip(probs, masks, strict=True)]))
                outer.history.append(score)
                if logs is not None:
                    logs["val_dice"] = score
                if score > outer.best:
                    outer.best, outer.best_epoch = score, epoch + 1
                    outer.best_weights = self.model.get_weights()

        self.history: list[float] = []
        self.best, self.best_epoch = -1.0, 0
        self.best_weights: list[Any] | None = None
        self.callback = _Callback()


# -- problem-rule measurements ---------------------------------------------------------------


def quality_features(fields: lung_fields.LungFields) -> dict[str, Any]:
    return {
        "components": fields.components,
        "area_fraction": round(fields.area_fraction, 4),
        "confidence": round(fields.confidence, 4),
        "problem": fields.problem,
    }


def measure_rules(
    model: Any, data_dir: Path, records: Sequence[Record], threshold: float, cfg: LungSegConfig
) -> dict[str, Any]:
    """Quality features and pass rate on train/val radiographs per source and on negatives."""
    rng = np.random.default_rng(cfg.seed)
    negatives = cfg.negatives_measured
    groups: dict[str, list[np.ndarray]] = {}
    for source in cfg.sources_measured:
        chosen = [r for r in records if r.source == source and r.split in ("train", "val")]
        chosen = [chosen[i] for i in rng.permutation(len(chosen))[: cfg.per_source_measured]]
        groups[f"xray_{source}"] = [read_image(data_dir / r.path).display for r in chosen]
    ct = [r for r in records if r.modality == "ct" and r.split == "val"]
    groups["negative_ct_val"] = [
        read_image(data_dir / ct[i].path).display for i in rng.permutation(len(ct))[:negatives]
    ]
    side = cache_size(cfg.input_size)
    groups["negative_synthetic"] = [synthetic_negative(rng, side) for _ in range(negatives)]
    return {name: _group_stats(model, d, threshold) for name, d in groups.items()}


def _group_stats(model: Any, displays: Sequence[np.ndarray], threshold: float) -> dict[str, Any]:
    probs = predict(model, displays)
    fields = [
        lung_fields.lung_fields_from_probabilities(p, d.shape, threshold)
        for p, d in zip(probs, displays, strict=True)
    ]
    two = [f for f in fields if f.components == 2]
    areas = [f.area_fraction for f in two] or [float("nan")]
    return {
        "n": len(fields),
        "passed": sum(f.problem is None for f in fields),
        "two_components": len(two),
        "area_fraction_two_components_min_max": [round(min(areas), 3), round(max(areas), 3)],
        "confidence_min": round(min(f.confidence for f in fields), 3),
        "problems": sorted({f.problem.split(" (")[0] for f in fields if f.problem}),
    }


# -- artefact --------------------------------------------------------------------------------


def contact_sheet(
    model: Any, items: Sequence[MaskedImage], threshold: float, path: Path, title: str
) -> None:
    """Images with the predicted outline (red) and the reference mask outline (green)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = predict(model, [m.display for m in items])
    cols = 5
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, item, prob in zip(np.ravel(axes), items, probs, strict=False):
        fields = lung_fields.lung_fields_from_probabilities(prob, item.mask.shape, threshold)
        ax.imshow(item.display, cmap="gray", vmin=0, vmax=1)
        ax.contour(item.mask, levels=[0.5], colors="lime", linewidths=0.8)
        for polygon in fields.outline():
            ax.plot(polygon[:, 0], polygon[:, 1], color="red", linewidth=0.8)
        ax.set_title(
            f"{Path(item.record.path).stem} {dice(fields.mask, item.mask):.3f}", fontsize=8
        )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def build_card(
    out: Path,
    model: Any,
    metrics: dict[str, Any],
    data: DataInfo,
    command: str,
    training: dict[str, Any],
) -> ModelCard:
    size = int(model.inputs[0].shape[1])
    return ModelCard(
        name=MODEL_NAME,
        version=out.name,
        title="Lung-field segmentation of frontal chest radiographs (small U-Net)",
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        research_use_only=True,
        classes=("lung",),
        input=InputSpec(
            size=size,
            function="dicom_node.pipelines.xray.lung_fields.segmentation_input",
            description=(
                f"display image squashed to {size}x{size}, robust 1-99 percentile stretch of the "
                "central region (dicom_node.pipelines.xray.preprocessing.to_model_input); "
                "output: sigmoid lung probability per pixel"
            ),
        ),
        logits_layer="lung_probability",
        decision=DecisionRule(
            rule=f"lung = p >= {metrics['threshold']['value']} after resizing p to the source",
            weights=(1.0,),
            fitted_on="val masks (mean Dice at source pixels)",
        ),
        architecture=Architecture(
            backbone=f"U-Net, filters {list(training['filters'])}, conv-BN-ReLU x2 per level",
            head="1x1 convolution, sigmoid",
            parameters=int(model.count_params()),
            weights_provenance="from scratch (random initialisation); no pretrained weights",
            description=(
                "max-pool down, bilinear up-sampling + skip concatenation; standard Keras layers "
                "only, loads without custom objects"
            ),
        ),
        data=data,
        versions=versions(),
        metrics={**metrics, "training": {**training, "command": command}},
        intended_use=(
            "Research use: lung fields of frontal (PA/AP) chest radiographs for display, "
            "region statistics and a plausibility check that an image is such a radiograph. "
            "Not for diagnosis."
        ),
        limitations=(
            "The reference masks are lungVAE model output (Selvan et al. 2020), not manual "
            "outlines; some are visibly wrong (e.g. ieee_72_1), so Dice measures agreement with "
            "that model, not with radiologists.",
            "All masks are on ieee images (publication figures, Radiopaedia, ICU films); other "
            "sources (NIH, Hannover, pediatric Kaggle, real CR DICOM) were only checked visually "
            "and by the problem-rule pass rates on the card.",
            "lungVAE masks include the lung behind dense opacities; dense consolidation or "
            "effusion may still be cut from the predicted fields.",
            "Lateral views, CT and photographs are rejected by the problem rules, not by a "
            "trained classifier; unusual images may pass or fail wrongly.",
            f"Input {size}x{size}: outlines are smooth at the source scale; fine detail "
            "(costophrenic angles) is approximate.",
            f"Mask licence: {MASK_LICENCE}; research and non-commercial use only.",
        ),
        plots=("predictions.png",),
    )


def data_info(data_dir: Path, records: Sequence[Record], counts: dict[str, int]) -> DataInfo:
    return DataInfo(
        data_dir=str(data_dir),
        manifest_sha256=manifest_sha256(data_dir),
        split_counts=split_counts([r for r in records if r.modality == "ct"]),
        used_per_split={
            "lung_masks (ieee, lungVAE, CC BY-NC-SA 4.0)": {
                k: v for k, v in counts.items() if k in ("train", "val", "test")
            },
            "negatives (empty masks)": {"ct_train_png": counts["ct_train"]},
        },
        train_sources={"ieee": counts["train"], "ucsd_ct": counts["ct_train"]},
    )


def fit(
    cfg: LungSegConfig, train: Sequence[MaskedImage], val: Sequence[MaskedImage], ct: Any
) -> Any:
    import keras

    size, side = cfg.input_size, cache_size(cfg.input_size)
    model = build_unet(cfg.filters, size)
    steps = cfg.epochs * cfg.steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, steps, alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=bce_dice_loss)
    batches = Batches(
        [cache_square(m.display, size) for m in train],
        [resize_square(m.mask.astype(np.float32), side) >= 0.5 for m in train],
        ct,
        cfg,
    )
    val_inputs = np.stack([segmentation_input(m.display, size) for m in val])
    val_masks = np.stack([resize_square(m.mask.astype(np.float32), size) >= 0.5 for m in val])
    val_dice = ValDice(val_inputs, val_masks)
    model.fit(batches.dataset, epochs=cfg.epochs, callbacks=[val_dice.callback], verbose=2)
    model.set_weights(val_dice.best_weights)
    return model, val_dice


def save_for_inference(model: Any, cfg: LungSegConfig, path: Path) -> None:
    """Save an uncompiled copy: a compiled model would also store Adam's moments (3x the size)."""
    clean = build_unet(cfg.filters, cfg.input_size)
    clean.set_weights(model.get_weights())
    clean.save(path)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    return fn(), time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    config.add_argument(parser, MODEL_NAME)
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's")
    args = parser.parse_args(argv)
    cfg = config.override(config.load(LungSegConfig, args.config), epochs=args.epochs)

    import keras

    keras.utils.set_random_seed(cfg.seed)
    # op determinism is left off: it doubles the CPU step time; seeds fix data and init
    records = read_manifest(args.data)
    train, val, test = (load_masked(args.data, records, s) for s in ("train", "val", "test"))
    ct_records = [r for r in records if r.modality == "ct" and r.split == "train"]
    ct = [cache_square(read_image(args.data / r.path).display, cfg.input_size) for r in ct_records]
    log(f"masks train/val/test {len(train)}/{len(val)}/{len(test)}, CT negatives {len(ct)}")

    (model, val_dice), duration = timed(lambda: fit(cfg, train, val, ct))
    log(f"trained in {duration:.0f} s, best val Dice (input scale) {val_dice.best:.4f}")
    val_probs = predict(model, [m.display for m in val])
    threshold = choose_threshold(val_probs, val, cfg.thresholds)
    test_probs = predict(model, [m.display for m in test])
    metrics: dict[str, Any] = {
        "threshold": {"value": threshold, "chosen_on": "val", "candidates": list(cfg.thresholds)},
        "val": {"dice": summary(source_dice(val_probs, val, threshold))},
        "test": {"dice": summary(source_dice(test_probs, test, threshold))},
        "problem_rules": {
            "limits": _rule_limits(),
            "measured": measure_rules(model, args.data, records, threshold, cfg),
        },
    }
    log(f"threshold {threshold}; val {metrics['val']}; test {metrics['test']}")

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    save_for_inference(model, cfg, out / "model.keras")
    training = {
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "best_epoch": val_dice.best_epoch,
        "steps_per_epoch": cfg.steps_per_epoch,
        "batch_size": cfg.batch_size,
        "optimizer": f"Adam, cosine decay from {cfg.learning_rate}",
        "loss": "binary cross-entropy + batch soft Dice",
        "filters": list(cfg.filters),
        "batch_mix": {
            "lung_masks": cfg.positive_fraction,
            "ct_slices": cfg.ct_fraction,
            "synthetic": round(1 - cfg.positive_fraction - cfg.ct_fraction, 3),
        },
        "synthetic_negatives": "blank/constant, uniform noise, linear and radial gradients, "
        "smooth noise, random ellipses and polygons",
        "augmentation": "rotation +-15 deg, zoom 0.75-1.25, aspect exp(+-0.2), shift +-10%, "
        "horizontal flip, fill 0/1/mean, gamma exp(+-0.5), blur, down-up sampling 1.5-4x, "
        "0-3 random rectangles, contrast/brightness jitter, Gaussian noise",
        "val_dice_per_epoch": [round(v, 4) for v in val_dice.history],
        "duration_s": round(duration, 1),
        "machine": machine(),
        "config": config.record(args.config, cfg),
    }
    counts = {"train": len(train), "val": len(val), "test": len(test), "ct_train": len(ct)}
    info = data_info(args.data, records, counts)
    command = command_line("training.train_lungseg", argv)
    built = build_card(out, model, metrics, info, command, training)
    card.write(built, out, ("model.keras", "model_card.json"))
    title = "test masks: lungVAE (green), model (red)"
    contact_sheet(model, test, threshold, out / "predictions.png", title)
    log(f"wrote {out}")


def _rule_limits() -> dict[str, float]:
    names = (
        "MIN_COMPONENT_FRACTION",
        "MIN_AREA_FRACTION",
        "MAX_AREA_FRACTION",
        "MIN_SIZE_RATIO",
        "MIN_CENTRE_DISTANCE",
        "MIN_ROW_OVERLAP",
        "MIN_CONFIDENCE",
    )
    return {name: float(getattr(lung_fields, name)) for name in names}


if __name__ == "__main__":
    main()

"""The training run shared by the X-ray and CT models: data, fit, evaluation, card, artefact.

One run writes, into its output directory (an artefact directory when shipped)::

    model.keras  model_card.json  model_card.md  SHA256SUMS
    history.csv  predictions.csv  training_curves.png  confusion_<split>.png
    roc_<split>.png  reliability_<split>.png
"""

from __future__ import annotations

import csv
import json
import platform
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.model_store import CARD_FILE, WEIGHTS_FILE, write_checksums
from dicom_node.preprocessing import DEFAULT_CENTRAL_MARGIN, DEFAULT_PERCENTILES
from training import card as card_io
from training import plots
from training.augment import AugmentConfig
from training.data import (
    Record,
    load_inputs,
    manifest_sha256,
    read_manifest,
    sample_weights,
    select,
    split_counts,
)
from training.evaluate import (
    evaluate,
    fit_decision_weight,
    fit_temperature,
    macro_auc,
    out_of_set,
    softmax,
)

# A function computing logits for model inputs: what extra evaluations get.
LogitsFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TaskSpec:
    """What differs between the X-ray and the CT model."""

    name: str  # artefact name under models/
    title: str
    modality: str  # manifest modality
    classes: tuple[str, ...]
    intended_use: str
    limitations: tuple[str, ...]
    out_of_set_classes: tuple[str, ...] = ()
    input_description: str = ""
    extra_card: dict[str, Any] = field(default_factory=dict)
    # (class, sensitivity): the label rule weights this class until validation reaches it.
    operating_point: tuple[str, float] | None = None
    # (title, description, fn(logits_fn, temperature, data_dir, classes) -> results)
    extra_evaluations: tuple[tuple[str, str, Callable[..., Any]], ...] = ()
    # (split, metric path in the split's metrics such as "macro_roc_auc" or
    # "per_class.covid.sensitivity", minimum): the quality bar, reported met or not.
    targets: tuple[tuple[str, str, float], ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    data_dir: Path
    out_dir: Path
    version: str = "1.0.0"
    backbone: str = "compact"
    weights: str | None = None
    freeze_backbone: bool = False
    head: str = "gap"
    input_size: int = 224
    epochs: int = 60
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"  # cosine | plateau | constant
    seed: int = 42
    patience: int | None = 15  # None: no early stopping (fixed epochs)
    source_balance: float = 0.5
    limit_per_class: int | None = None
    eval_splits: tuple[str, ...] = ("val", "test")
    n_boot: int = 1000
    target_sensitivity: float | None = None  # overrides the task's operating point; 0: none
    init_from: Path | None = None  # a .keras model whose same-named layers initialise this one
    ensemble: int = 1  # models trained with seeds seed, seed+1, ...; their logits averaged
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    command: str = ""

    def __post_init__(self) -> None:
        # Checked before any data is loaded or any model trained.
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be at least 1, got {self.ensemble}")
        if self.ensemble > 1 and self.backbone != "compact":
            raise ValueError("--ensemble is implemented for the compact CNN only")


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces a run (``argv`` None: this process's arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in args)])


def _versions() -> dict[str, str]:
    import keras
    import pydicom
    import sklearn
    import tensorflow as tf

    import dicom_node

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pydicom": pydicom.__version__,
        "scikit-learn": sklearn.__version__,
        "dicom-node": getattr(dicom_node, "__version__", "unknown"),
    }


def _log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def _initialise_from(model: Any, path: Path) -> int:
    """Copy weights of same-named, same-shaped layers (not the classifier head) from a model."""
    import keras

    source = keras.models.load_model(path, compile=False)
    names = {layer.name for layer in source.layers}
    copied = 0
    for layer in model.layers:
        if layer.name in ("logits",) or not layer.weights or layer.name not in names:
            continue
        weights = source.get_layer(layer.name).get_weights()
        if [w.shape for w in weights] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(weights)
            copied += 1
    if copied == 0:
        raise ValueError(f"no layer of {path} matches the model being trained")
    return copied


def _check_targets(
    targets: Sequence[tuple[str, str, float]], metrics: dict[str, Any]
) -> list[dict[str, Any]]:
    """The task's quality targets on the evaluated splits, with the values reached."""
    results = []
    for split, path, minimum in targets:
        if split not in metrics:
            continue
        value: Any = metrics[split]
        for key in path.split("."):
            value = value[key]
        results.append(
            {
                "split": split,
                "metric": path,
                "minimum": minimum,
                "value": float(value),
                "met": bool(value >= minimum),
            }
        )
    return results


def _target_limitations(targets: Sequence[dict[str, Any]]) -> list[str]:
    return [
        f"Below the issue's target: {t['metric']} on the {t['split']} split is "
        f"{t['value']:.3f} (target >= {t['minimum']:.2f})."
        for t in targets
        if not t["met"]
    ]


def _weights_provenance(cfg: TrainConfig) -> str:
    if cfg.init_from is not None:
        from dicom_node.model_store import sha256_file

        return (
            f"initialised from {cfg.init_from} (SHA-256 {sha256_file(cfg.init_from)[:16]}...; "
            "same-named layers, classifier head excluded), then fine-tuned"
        )
    if cfg.weights is None:
        return "trained from scratch (random initialisation, seed above); no pretrained weights"
    if cfg.weights == "imagenet":
        return "backbone initialised from keras.applications ImageNet weights (downloaded)"
    return f"backbone initialised from the local weights file {cfg.weights}"


def run_training(task: TaskSpec, cfg: TrainConfig) -> dict[str, Any]:
    """Train, evaluate and write one run; returns the model card."""
    import keras
    import tensorflow as tf

    from training.augment import augment_batch
    from training.models import average_ensemble, build_model, gradcam_layer_name

    started = time.time()
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    classes = list(task.classes)

    records = read_manifest(cfg.data_dir)
    splits: dict[str, list[Record]] = {
        split: select(records, task.modality, classes, split, cfg.limit_per_class)
        for split in ("train", "val", *[s for s in cfg.eval_splits if s != "val"])
    }
    _log(f"images per split: { {s: len(r) for s, r in splits.items()} }")
    arrays = {s: load_inputs(r, cfg.data_dir, cfg.input_size) for s, r in splits.items()}
    labels = {s: np.array([classes.index(r.label) for r in recs]) for s, recs in splits.items()}

    train = splits["train"]
    weights = sample_weights(
        [r.label for r in train], [r.family for r in train], classes, cfg.source_balance
    )

    def fit_member(seed: int, history_path: Path) -> tuple[Any, dict[str, list[float]], int]:
        """Train one model (one seed); returns it, its history and its restored epoch."""
        keras.utils.set_random_seed(seed)
        model = build_model(
            cfg.backbone, cfg.input_size, len(classes), cfg.weights, cfg.freeze_backbone, cfg.head
        )
        if cfg.init_from is not None:
            copied = _initialise_from(model, cfg.init_from)
            _log(f"initialised {copied} layers from {cfg.init_from}")
        steps_per_epoch = max(1, -(-len(train) // cfg.batch_size))
        learning_rate: Any = cfg.learning_rate
        if cfg.schedule == "cosine":
            # Cosine decay over the whole run: unlike reduce-on-plateau, it does not collapse the
            # rate early when the (small, noisy) validation loss stalls for a few epochs.
            learning_rate = keras.optimizers.schedules.CosineDecay(
                cfg.learning_rate, decay_steps=cfg.epochs * steps_per_epoch, alpha=0.01
            )
        if cfg.optimizer == "adam":
            optimizer: Any = keras.optimizers.Adam(learning_rate)
        else:
            optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=cfg.weight_decay)
        model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])

        generator = tf.random.Generator.from_seed(seed)

        def augment(x: Any, y: Any, w: Any) -> tuple[Any, Any, Any]:
            return augment_batch(x, generator, cfg.augment), y, w

        onehot = np.eye(len(classes), dtype=np.float32)
        train_ds = (
            tf.data.Dataset.from_tensor_slices((arrays["train"], onehot[labels["train"]], weights))
            .shuffle(len(train), seed=seed, reshuffle_each_iteration=True)
            .batch(cfg.batch_size)
            .map(augment, num_parallel_calls=1, deterministic=True)
            .prefetch(1)
        )
        val_data = (arrays["val"], onehot[labels["val"]])
        callbacks: list[Any] = [
            keras.callbacks.CSVLogger(str(history_path)),
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: _log(
                    f"epoch {epoch + 1}: "
                    + " ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items()))
                )
            ),
        ]
        if cfg.patience is not None:
            callbacks += [
                # With a decaying schedule the early, high-rate epochs are not candidates:
                # monitoring starts halfway, then the best validation epoch is restored.
                keras.callbacks.EarlyStopping(
                    monitor="val_loss",
                    patience=cfg.patience,
                    restore_best_weights=True,
                    start_from_epoch=cfg.epochs // 2 if cfg.schedule == "cosine" else 0,
                ),
            ]
            if cfg.schedule == "plateau":
                callbacks.append(
                    keras.callbacks.ReduceLROnPlateau(
                        monitor="val_loss",
                        factor=0.5,
                        patience=max(2, cfg.patience // 3),
                        min_lr=1e-5,
                    )
                )
        _log(
            f"training {cfg.backbone} ({model.count_params():,} parameters) on {len(train)} images"
        )
        fit = model.fit(
            train_ds, validation_data=val_data, epochs=cfg.epochs, callbacks=callbacks, verbose=0
        )
        history = {k: [float(v) for v in values] for k, values in fit.history.items()}
        first = cfg.epochs // 2 if cfg.schedule == "cosine" and cfg.patience is not None else 0
        best_epoch = (
            first + int(np.argmin(history["val_loss"][first:])) + 1
            if cfg.patience is not None
            else len(history["loss"])
        )
        return model, history, best_epoch

    seeds = [cfg.seed + i for i in range(cfg.ensemble)]
    members = []
    for seed in seeds:
        path = cfg.out_dir / ("history.csv" if seed == cfg.seed else f"history_seed{seed}.csv")
        member, member_history, member_best = fit_member(seed, path)
        member_probs = member.predict(arrays["val"], batch_size=32, verbose=0)
        member_auc = macro_auc(labels["val"], member_probs, len(classes))
        _log(f"seed {seed}: restored epoch {member_best}, val macro AUC {member_auc:.3f}")
        members.append(
            {
                "seed": seed,
                "model": member,
                "history": member_history,
                "best_epoch": member_best,
                "val_macro_auc": member_auc,
            }
        )
    history, best_epoch = members[0]["history"], members[0]["best_epoch"]
    if len(members) == 1:
        model = members[0]["model"]
    else:
        model = average_ensemble([m["model"] for m in members])
        _log(f"averaged {len(members)} models (seeds {seeds}) into one")

    # Inference graph without the optimizer: small artefact, and the logits for temperature.
    inference = keras.Model(model.inputs, model.outputs, name=model.name)
    logits_model = keras.Model(model.inputs, model.get_layer("logits").output)

    def logits_fn(x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, len(classes)), np.float32)
        return np.asarray(logits_model.predict(x, batch_size=32, verbose=0), dtype=np.float64)

    logits = {s: logits_fn(arrays[s]) for s in splits if s != "train"}
    temperature = fit_temperature(logits["val"], labels["val"]) if len(labels["val"]) else 1.0
    decision: dict[str, Any] = {"rule": "label = argmax(p)", "weights": [1.0] * len(classes)}
    operating_point = task.operating_point
    if operating_point and cfg.target_sensitivity is not None:
        operating_point = (
            (operating_point[0], cfg.target_sensitivity) if cfg.target_sensitivity else None
        )
    if operating_point and len(labels["val"]):
        positive, target = operating_point
        k = classes.index(positive)
        w = fit_decision_weight(softmax(logits["val"], temperature), labels["val"], k, target)
        decision = {
            "rule": "label = argmax(p_k * weight_k) over the calibrated probabilities",
            "weights": [w if i == k else 1.0 for i in range(len(classes))],
            "fitted_on": "val",
            "target": {"class": positive, "sensitivity": target},
        }
        _log(f"decision weight for {positive}: {w:.3f} (validation sensitivity >= {target})")
    weights_k = decision["weights"]
    _log(f"temperature fitted on validation: {temperature:.3f}")

    metrics: dict[str, Any] = {}
    prediction_rows: list[list[Any]] = []
    plot_files = ["training_curves.png"]
    for split in cfg.eval_splits:
        probs = softmax(logits[split], temperature)
        recs = splits[split]
        metrics[split] = evaluate(
            labels[split],
            probs,
            classes,
            [r.patient_id for r in recs],
            [r.source for r in recs],
            n_boot=cfg.n_boot,
            seed=cfg.seed,
            weights=weights_k,
        )
        m = metrics[split]
        _log(
            f"{split}: accuracy {m['accuracy']:.3f} macro AUC {m['macro_roc_auc']:.3f} "
            f"ECE {m['ece']:.3f}"
        )
        plots.confusion(
            m["confusion_matrix"],
            classes,
            cfg.out_dir / f"confusion_{split}.png",
            f"{task.name} {cfg.version}: {split}",
        )
        plots.roc(
            labels[split],
            probs,
            classes,
            cfg.out_dir / f"roc_{split}.png",
            f"{task.name} {cfg.version}: {split} ROC",
        )
        plots.reliability(
            m["reliability_bins"],
            m["ece"],
            cfg.out_dir / f"reliability_{split}.png",
            f"{task.name}: {split} reliability",
        )
        plot_files += [f"confusion_{split}.png", f"roc_{split}.png", f"reliability_{split}.png"]
        prediction_rows += [
            [split, r.path, r.source, r.label, *(f"{p:.5f}" for p in row)]
            for r, row in zip(recs, probs, strict=True)
        ]

    # Classes the model does not know (e.g. viral pneumonia): report how they are labelled.
    extra_out_of_set: dict[str, Any] = {}
    for split in cfg.eval_splits:
        recs = [
            r
            for r in records
            if r.modality == task.modality
            and r.split == split
            and r.label in task.out_of_set_classes
        ]
        if cfg.limit_per_class is not None:
            recs = recs[: cfg.limit_per_class]
        if recs:
            probs = softmax(logits_fn(load_inputs(recs, cfg.data_dir, cfg.input_size)), temperature)
            extra_out_of_set[split] = out_of_set(
                probs, classes, [r.source for r in recs], weights_k
            )
            prediction_rows += [
                [split, r.path, r.source, r.label, *(f"{p:.5f}" for p in row)]
                for r, row in zip(recs, probs, strict=True)
            ]
    extra_evaluations: dict[str, Any] = {}
    if extra_out_of_set:
        extra_evaluations["Classes outside the model"] = {
            "description": "Images of classes the model was not trained on, labelled by it "
            f"({', '.join(task.out_of_set_classes)}): counts of predicted labels and mean "
            "probabilities per source.",
            "results": extra_out_of_set,
        }
    for title, description, fn in task.extra_evaluations:
        extra_evaluations[title] = {
            "description": description,
            "results": fn(logits_fn, temperature, cfg.data_dir, classes, cfg.input_size),
        }

    plots.training_curves(
        history, cfg.out_dir / "training_curves.png", f"{task.name} {cfg.version} ({cfg.backbone})"
    )
    for m in members[1:]:
        name = f"training_curves_seed{m['seed']}.png"
        plots.training_curves(
            m["history"], cfg.out_dir / name, f"{task.name} {cfg.version} (seed {m['seed']})"
        )
        plot_files.append(name)
    with (cfg.out_dir / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "path", "source", "true", *[f"p_{c}" for c in classes]])
        writer.writerows(prediction_rows)

    inference.save(cfg.out_dir / WEIGHTS_FILE)
    targets = _check_targets(task.targets, metrics)
    card: dict[str, Any] = {
        "name": task.name,
        "version": cfg.version,
        "title": task.title,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "research_use_only": True,
        "classes": classes,
        "input": {
            "size": cfg.input_size,
            "channels": 1,
            "range": [0.0, 1.0],
            "percentiles": list(DEFAULT_PERCENTILES),
            "central_margin": DEFAULT_CENTRAL_MARGIN,
            "function": "dicom_node.preprocessing.to_model_input",
            "description": task.input_description,
        },
        "logits_layer": "logits",
        "temperature": temperature,
        "decision": decision,
        "gradcam_layer": gradcam_layer_name(cfg.backbone),
        "architecture": {
            "backbone": cfg.backbone,
            "head": cfg.head,
            "parameters": int(model.count_params()),
            "weights_provenance": _weights_provenance(cfg)
            + (
                f"; {len(members)} such models (seeds {seeds[0]}..{seeds[-1]}), logits averaged"
                if len(members) > 1
                else ""
            ),
            "description": model.name,
        },
        "training": {
            "command": cfg.command,
            "seed": cfg.seed,
            "epochs_max": cfg.epochs,
            "epochs_run": len(history["loss"]),
            "best_epoch": best_epoch,
            "early_stopping": (
                f"val_loss, patience {cfg.patience}, best weights restored"
                + (
                    f" (monitored from epoch {cfg.epochs // 2 + 1})"
                    if cfg.schedule == "cosine"
                    else ""
                )
                if cfg.patience is not None
                else "none (fixed number of epochs)"
            ),
            "batch_size": cfg.batch_size,
            "optimizer": cfg.optimizer,
            "learning_rate": cfg.learning_rate,
            "learning_rate_schedule": cfg.schedule,
            "weight_decay": cfg.weight_decay if cfg.optimizer == "adamw" else 0.0,
            "class_weighting": "per-sample weights: classes equal in total; within a class, "
            f"source families weighted by n^-{cfg.source_balance} (source_balance)",
            "source_balance": cfg.source_balance,
            "limit_per_class": cfg.limit_per_class,
            "augmentation": cfg.augment.as_dict(),
            "duration_s": time.time() - started,
            "machine": f"{platform.machine()}, {_cpu_count()} CPU cores, no GPU"
            if not tf.config.list_physical_devices("GPU")
            else "GPU",
            "history": history,
            "ensemble": {
                "members": len(members),
                "rule": "logits averaged (one Keras model; Grad-CAM layer = the members' "
                "feature maps concatenated)"
                if len(members) > 1
                else "single model",
                "seeds": [
                    {
                        "seed": m["seed"],
                        "epochs_run": len(m["history"]["loss"]),
                        "best_epoch": m["best_epoch"],
                        "val_macro_auc": m["val_macro_auc"],
                    }
                    for m in members
                ],
            },
        },
        "data": {
            "data_dir": str(cfg.data_dir),
            "manifest_sha256": manifest_sha256(cfg.data_dir),
            "split_counts": split_counts(r for r in records if r.modality == task.modality),
            "used_per_split": {
                s: dict(Counter(r.label for r in recs)) for s, recs in splits.items()
            },
            "train_sources": dict(Counter(f"{r.label}/{r.source}" for r in train)),
        },
        "versions": _versions(),
        "metrics": metrics,
        "extra_evaluations": extra_evaluations,
        "intended_use": task.intended_use,
        "limitations": [*_target_limitations(targets), *task.limitations],
        "targets": targets,
        "plots": plot_files,
        **task.extra_card,
    }
    card_io.write_json(card, cfg.out_dir / CARD_FILE)
    card_io.write_markdown(
        json.loads((cfg.out_dir / CARD_FILE).read_text()), cfg.out_dir / "model_card.md"
    )
    # The card carries inference parameters (temperature, input size), so it is checksummed too.
    write_checksums(cfg.out_dir, (WEIGHTS_FILE, CARD_FILE))
    _log(f"wrote {cfg.out_dir} in {time.time() - started:.0f} s")
    return card


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def common_arguments(parser: Any, defaults: TrainConfig, name: str) -> None:
    """Command-line options shared by ``train_xray`` and ``train_ct``."""
    from training.models import BACKBONES

    parser.add_argument(
        "--data",
        type=Path,
        default=defaults.data_dir,
        help="data set directory with manifest.csv (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output directory (default: runs/{name}/<UTC time>; the shipped "
        f"default is models/{name}/<version>)",
    )
    parser.add_argument("--version", default=defaults.version)
    parser.add_argument("--backbone", choices=BACKBONES, default=defaults.backbone)
    parser.add_argument(
        "--weights",
        default="none",
        help="none | imagenet (downloads; fails offline) | PATH to weights file",
    )
    parser.add_argument("--freeze-backbone", action="store_true")
    parser.add_argument("--input-size", type=int, default=defaults.input_size)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--patience",
        type=int,
        default=defaults.patience,
        help="early stopping patience on val_loss (0: off)",
    )
    parser.add_argument(
        "--source-balance",
        type=float,
        default=defaults.source_balance,
        help="within-class source weighting exponent (0: off)",
    )
    parser.add_argument(
        "--limit-per-class",
        type=int,
        default=None,
        help="use only the first N images per class and split (smoke tests)",
    )
    parser.add_argument(
        "--eval-splits",
        default=",".join(defaults.eval_splits),
        help="splits to evaluate, comma-separated (use 'val' while developing)",
    )
    parser.add_argument(
        "--n-boot",
        type=int,
        default=defaults.n_boot,
        help="bootstrap resamples for AUC confidence intervals",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="initialise same-named layers from this .keras model (transfer learning)",
    )
    parser.add_argument(
        "--ensemble",
        type=int,
        default=defaults.ensemble,
        help="train this many models (seeds seed, seed+1, ...) and average their logits "
        "in one model (compact CNN only; default: %(default)s)",
    )
    parser.add_argument(
        "--target-sensitivity",
        type=float,
        default=None,
        help="validation sensitivity the label rule must reach for the task's target class "
        "(default: the task's operating point; 0: plain argmax)",
    )


def config_from_args(
    args: Any, defaults: TrainConfig, name: str, command: str, **overrides: Any
) -> TrainConfig:
    weights = None if str(args.weights).lower() == "none" else str(args.weights)
    out = args.out or Path("runs") / name / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    values: dict[str, Any] = {
        "data_dir": args.data,
        "out_dir": out,
        "version": args.version,
        "backbone": args.backbone,
        "weights": weights,
        "freeze_backbone": args.freeze_backbone,
        "input_size": args.input_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "seed": args.seed,
        "patience": args.patience or None,
        "source_balance": args.source_balance,
        "limit_per_class": args.limit_per_class,
        "eval_splits": tuple(s for s in args.eval_splits.split(",") if s),
        "n_boot": args.n_boot,
        "target_sensitivity": args.target_sensitivity,
        "init_from": args.init_from,
        "ensemble": args.ensemble,
        "augment": defaults.augment,
        "weight_decay": defaults.weight_decay,
        "optimizer": defaults.optimizer,
        "schedule": defaults.schedule,
        "command": command,
    }
    values.update(overrides)
    if "val" not in values["eval_splits"]:
        values["eval_splits"] = ("val", *values["eval_splits"])
    return TrainConfig(**values)


def print_summary(card: dict[str, Any], splits: Sequence[str] = ("val", "test")) -> None:
    for split in splits:
        m = card["metrics"].get(split)
        if m:
            print(
                f"{split}: accuracy {m['accuracy']:.3f}, macro AUC {m['macro_roc_auc']:.3f}, "
                f"ECE {m['ece']:.3f}"
            )

"""The end-to-end Keras run of the legacy compact CNN (``models/xray_classifier/1.0.0``).

Data, fit, evaluation, card and artefact in one run; see ``training/legacy/__init__.py`` for why
it is kept.

One run writes, into its output directory (an artefact directory when shipped)::

    model.keras  model_card.json  model_card.md  SHA256SUMS
    history.csv  predictions.csv  training_curves.png  confusion_<split>.png
    roc_<split>.png  reliability_<split>.png
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.pipelines.model_card import (
    Architecture,
    DataInfo,
    DecisionRule,
    EnsembleInfo,
    EnsembleMember,
    ExtraEvaluation,
    InputSpec,
    ModelCard,
    OperatingPoint,
    Target,
    TrainingInfo,
)
from dicom_node.pipelines.model_store import CARD_FILE, WEIGHTS_FILE
from dicom_node.pipelines.xray.preprocessing import DEFAULT_CENTRAL_MARGIN, DEFAULT_PERCENTILES
from training import card, plots
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
from training.legacy.augment import AugmentConfig
from training.provenance import log, machine, versions

__all__ = [
    "ExtraEvaluationFn",
    "LogitsFn",
    "TaskSpec",
    "TrainConfig",
    "common_arguments",
    "config_from_args",
    "print_summary",
    "run_training",
]

# A function computing logits for model inputs: what extra evaluations get.
LogitsFn = Callable[[np.ndarray], np.ndarray]
# An extra evaluation: fn(logits_fn, temperature, data_dir, classes, input_size) -> results.
ExtraEvaluationFn = Callable[[LogitsFn, float, Path, Sequence[str], int], Mapping[str, Any]]


@dataclass(frozen=True)
class TaskSpec:
    """The task: what is trained and what the card says about it."""

    name: str  # artefact name under models/
    title: str
    modality: str  # manifest modality
    classes: tuple[str, ...]
    intended_use: str
    limitations: tuple[str, ...]
    out_of_set_classes: tuple[str, ...] = ()
    input_description: str = ""
    # (class, sensitivity): the label rule weights this class until validation reaches it.
    operating_point: tuple[str, float] | None = None
    # (title, description, fn): results reported in the card under the title
    extra_evaluations: tuple[tuple[str, str, ExtraEvaluationFn], ...] = ()
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
    targets: Sequence[tuple[str, str, float]], metrics: Mapping[str, Any]
) -> tuple[Target, ...]:
    """The task's quality targets on the evaluated splits, with the values reached."""
    results = []
    for split, path, minimum in targets:
        if split not in metrics:
            continue
        value: Any = metrics[split]
        for key in path.split("."):
            value = value[key]
        results.append(
            Target(
                split=split,
                metric=path,
                minimum=minimum,
                value=float(value),
                met=bool(value >= minimum),
            )
        )
    return tuple(results)


def _target_limitations(targets: Sequence[Target]) -> list[str]:
    return [
        f"Below the issue's target: {t.metric} on the {t.split} split is "
        f"{t.value:.3f} (target >= {t.minimum:.2f})."
        for t in targets
        if not t.met
    ]


def _weights_provenance(cfg: TrainConfig) -> str:
    if cfg.init_from is not None:
        from dicom_node.pipelines.model_store import sha256_file

        return (
            f"initialised from {cfg.init_from} (SHA-256 {sha256_file(cfg.init_from)[:16]}...; "
            "same-named layers, classifier head excluded), then fine-tuned"
        )
    if cfg.weights is None:
        return "trained from scratch (random initialisation, seed above); no pretrained weights"
    if cfg.weights == "imagenet":
        return "backbone initialised from keras.applications ImageNet weights (downloaded)"
    return f"backbone initialised from the local weights file {cfg.weights}"


# -- the steps of one run --------------------------------------------------------------------


@dataclass(frozen=True)
class RunData:
    """The task's images: per split used, its records, model inputs and class indices."""

    records: list[Record]  # the whole manifest
    splits: dict[str, list[Record]]  # train, val and the other evaluated splits
    arrays: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    train_weights: np.ndarray  # per training sample


@dataclass(frozen=True)
class Member:
    """One trained model (one seed) of the run."""

    seed: int
    model: Any
    history: dict[str, list[float]]
    best_epoch: int  # the restored epoch
    val_macro_auc: float


@dataclass(frozen=True)
class Fitted:
    """The trained members and the model they make (the only member, or their average)."""

    members: list[Member]
    model: Any
    inference: Any  # the graph without the optimizer: what is saved
    logits_fn: LogitsFn


@dataclass(frozen=True)
class Calibration:
    temperature: float
    decision: DecisionRule


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, dict[str, Any]]  # per evaluated split
    extra_evaluations: dict[str, ExtraEvaluation]
    prediction_rows: list[list[Any]]
    plot_files: list[str]  # the per-split plots (training curves are added when written)


def load_data(task: TaskSpec, cfg: TrainConfig) -> RunData:
    classes = list(task.classes)
    records = read_manifest(cfg.data_dir)
    splits: dict[str, list[Record]] = {
        split: select(records, task.modality, classes, split, cfg.limit_per_class)
        for split in ("train", "val", *[s for s in cfg.eval_splits if s != "val"])
    }
    log(f"images per split: { {s: len(r) for s, r in splits.items()} }")
    arrays = {s: load_inputs(r, cfg.data_dir, cfg.input_size) for s, r in splits.items()}
    labels = {s: np.array([classes.index(r.label) for r in recs]) for s, recs in splits.items()}
    train = splits["train"]
    weights = sample_weights(
        [r.label for r in train], [r.family for r in train], classes, cfg.source_balance
    )
    return RunData(records, splits, arrays, labels, weights)


def _optimizer(cfg: TrainConfig, steps_per_epoch: int) -> Any:
    import keras

    learning_rate: Any = cfg.learning_rate
    if cfg.schedule == "cosine":
        # Cosine decay over the whole run: unlike reduce-on-plateau, it does not collapse the
        # rate early when the (small, noisy) validation loss stalls for a few epochs.
        learning_rate = keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate, decay_steps=cfg.epochs * steps_per_epoch, alpha=0.01
        )
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate)
    return keras.optimizers.AdamW(learning_rate, weight_decay=cfg.weight_decay)


def _train_dataset(cfg: TrainConfig, data: RunData, n_classes: int, seed: int) -> Any:
    """Shuffled, batched, augmented training samples with their one-hot labels and weights."""
    import tensorflow as tf

    from training.legacy.augment import augment_batch

    generator = tf.random.Generator.from_seed(seed)

    def augment(x: Any, y: Any, w: Any) -> tuple[Any, Any, Any]:
        return augment_batch(x, generator, cfg.augment), y, w

    onehot = np.eye(n_classes, dtype=np.float32)
    samples = (data.arrays["train"], onehot[data.labels["train"]], data.train_weights)
    return (
        tf.data.Dataset.from_tensor_slices(samples)
        .shuffle(len(data.splits["train"]), seed=seed, reshuffle_each_iteration=True)
        .batch(cfg.batch_size)
        .map(augment, num_parallel_calls=1, deterministic=True)
        .prefetch(1)
    )


def _callbacks(cfg: TrainConfig, history_path: Path) -> list[Any]:
    import keras

    callbacks: list[Any] = [
        keras.callbacks.CSVLogger(str(history_path)),
        keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: log(
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
    return callbacks


def _best_epoch(cfg: TrainConfig, history: Mapping[str, Sequence[float]]) -> int:
    """The epoch whose weights early stopping restored (the last one without it)."""
    if cfg.patience is None:
        return len(history["loss"])
    first = cfg.epochs // 2 if cfg.schedule == "cosine" else 0
    return first + int(np.argmin(history["val_loss"][first:])) + 1


def _fit_member(cfg: TrainConfig, data: RunData, n_classes: int, seed: int) -> Member:
    """Train one model (one seed); its history goes to ``history[_seed<seed>].csv``."""
    import keras

    from training.legacy.models import build_model

    keras.utils.set_random_seed(seed)
    model = build_model(
        cfg.backbone, cfg.input_size, n_classes, cfg.weights, cfg.freeze_backbone, cfg.head
    )
    if cfg.init_from is not None:
        copied = _initialise_from(model, cfg.init_from)
        log(f"initialised {copied} layers from {cfg.init_from}")
    train = data.splits["train"]
    optimizer = _optimizer(cfg, steps_per_epoch=max(1, -(-len(train) // cfg.batch_size)))
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    train_ds = _train_dataset(cfg, data, n_classes, seed)
    onehot = np.eye(n_classes, dtype=np.float32)
    val_data = (data.arrays["val"], onehot[data.labels["val"]])
    history_path = cfg.out_dir / ("history.csv" if seed == cfg.seed else f"history_seed{seed}.csv")
    callbacks = _callbacks(cfg, history_path)
    log(f"training {cfg.backbone} ({model.count_params():,} parameters) on {len(train)} images")
    result = model.fit(
        train_ds, validation_data=val_data, epochs=cfg.epochs, callbacks=callbacks, verbose=0
    )
    history = {k: [float(v) for v in values] for k, values in result.history.items()}
    best_epoch = _best_epoch(cfg, history)
    probs = model.predict(data.arrays["val"], batch_size=32, verbose=0)
    auc = macro_auc(data.labels["val"], probs, n_classes)
    log(f"seed {seed}: restored epoch {best_epoch}, val macro AUC {auc:.3f}")
    return Member(seed, model, history, best_epoch, auc)


def fit(task: TaskSpec, cfg: TrainConfig, data: RunData) -> Fitted:
    """Train the run's model: one per seed ``cfg.seed, cfg.seed + 1, ...``, logits averaged."""
    import keras

    from training.legacy.models import average_ensemble

    n_classes = len(task.classes)
    seeds = [cfg.seed + i for i in range(cfg.ensemble)]
    members = [_fit_member(cfg, data, n_classes, seed) for seed in seeds]
    if len(members) == 1:
        model = members[0].model
    else:
        model = average_ensemble([m.model for m in members])
        log(f"averaged {len(members)} models (seeds {seeds}) into one")

    # Inference graph without the optimizer: small artefact, and the logits for temperature.
    inference = keras.Model(model.inputs, model.outputs, name=model.name)
    logits_model = keras.Model(model.inputs, model.get_layer("logits").output)

    def logits_fn(x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, n_classes), np.float32)
        return np.asarray(logits_model.predict(x, batch_size=32, verbose=0), dtype=np.float64)

    return Fitted(members, model, inference, logits_fn)


def _operating_point(task: TaskSpec, cfg: TrainConfig) -> tuple[str, float] | None:
    """The task's (class, sensitivity) for the label rule; ``--target-sensitivity`` overrides
    the sensitivity, and 0 turns the operating point off."""
    if task.operating_point and cfg.target_sensitivity is not None:
        if not cfg.target_sensitivity:
            return None
        return (task.operating_point[0], cfg.target_sensitivity)
    return task.operating_point


def calibrate(
    task: TaskSpec, cfg: TrainConfig, val_logits: np.ndarray, val_labels: np.ndarray
) -> Calibration:
    """Temperature, then the label rule's operating point, both fitted on validation."""
    classes = list(task.classes)
    temperature = fit_temperature(val_logits, val_labels) if len(val_labels) else 1.0
    decision = DecisionRule.argmax(len(classes))
    operating_point = _operating_point(task, cfg)
    if operating_point and len(val_labels):
        positive, target = operating_point
        k = classes.index(positive)
        w = fit_decision_weight(softmax(val_logits, temperature), val_labels, k, target)
        decision = DecisionRule(
            rule="label = argmax(p_k * weight_k) over the calibrated probabilities",
            weights=tuple(w if i == k else 1.0 for i in range(len(classes))),
            fitted_on="val",
            target=OperatingPoint(class_name=positive, sensitivity=target),
        )
        log(f"decision weight for {positive}: {w:.3f} (validation sensitivity >= {target})")
    log(f"temperature fitted on validation: {temperature:.3f}")
    return Calibration(temperature, decision)


def _prediction_rows(split: str, recs: Sequence[Record], probs: np.ndarray) -> list[list[Any]]:
    return [
        [split, r.path, r.source, r.label, *(f"{p:.5f}" for p in row)]
        for r, row in zip(recs, probs, strict=True)
    ]


def _evaluate_split(
    task: TaskSpec,
    cfg: TrainConfig,
    split: str,
    data: RunData,
    probs: np.ndarray,
    weights: Sequence[float],
) -> dict[str, Any]:
    """One split's metrics, with its confusion, ROC and reliability plots."""
    classes = list(task.classes)
    recs = data.splits[split]
    m = evaluate(
        data.labels[split],
        probs,
        classes,
        [r.patient_id for r in recs],
        [r.source for r in recs],
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        weights=weights,
    )
    log(
        f"{split}: accuracy {m['accuracy']:.3f} macro AUC {m['macro_roc_auc']:.3f} "
        f"ECE {m['ece']:.3f}"
    )
    title = f"{task.name} {cfg.version}: {split}"
    plots.confusion(m["confusion_matrix"], classes, cfg.out_dir / f"confusion_{split}.png", title)
    plots.roc(data.labels[split], probs, classes, cfg.out_dir / f"roc_{split}.png", f"{title} ROC")
    plots.reliability(
        m["reliability_bins"],
        m["ece"],
        cfg.out_dir / f"reliability_{split}.png",
        f"{task.name}: {split} reliability",
    )
    return m


def evaluate_run(
    task: TaskSpec,
    cfg: TrainConfig,
    data: RunData,
    fitted: Fitted,
    logits: Mapping[str, np.ndarray],
    calibration: Calibration,
) -> Evaluation:
    """Metrics and plots per evaluated split, classes outside the model, the task's extras."""
    classes = list(task.classes)
    temperature, weights = calibration.temperature, calibration.decision.weights
    metrics: dict[str, dict[str, Any]] = {}
    rows: list[list[Any]] = []
    plot_files = ["training_curves.png"]
    for split in cfg.eval_splits:
        probs = softmax(logits[split], temperature)
        metrics[split] = _evaluate_split(task, cfg, split, data, probs, weights)
        plot_files += [f"confusion_{split}.png", f"roc_{split}.png", f"reliability_{split}.png"]
        rows += _prediction_rows(split, data.splits[split], probs)

    # Classes the model does not know (e.g. viral pneumonia): report how they are labelled.
    out_of_set_results: dict[str, Any] = {}
    for split in cfg.eval_splits:
        recs = [
            r
            for r in data.records
            if r.modality == task.modality
            and r.split == split
            and r.label in task.out_of_set_classes
        ]
        if cfg.limit_per_class is not None:
            recs = recs[: cfg.limit_per_class]
        if recs:
            inputs = load_inputs(recs, cfg.data_dir, cfg.input_size)
            probs = softmax(fitted.logits_fn(inputs), temperature)
            out_of_set_results[split] = out_of_set(
                probs, classes, [r.source for r in recs], weights
            )
            rows += _prediction_rows(split, recs, probs)
    extra: dict[str, ExtraEvaluation] = {}
    if out_of_set_results:
        extra["Classes outside the model"] = ExtraEvaluation(
            description="Images of classes the model was not trained on, labelled by it "
            f"({', '.join(task.out_of_set_classes)}): counts of predicted labels and mean "
            "probabilities per source.",
            results=out_of_set_results,
        )
    for title, description, fn in task.extra_evaluations:
        extra[title] = ExtraEvaluation(
            description=description,
            results=fn(fitted.logits_fn, temperature, cfg.data_dir, classes, cfg.input_size),
        )
    return Evaluation(metrics, extra, rows, plot_files)


def write_run_files(
    task: TaskSpec, cfg: TrainConfig, fitted: Fitted, evaluation: Evaluation
) -> list[str]:
    """Training curves, ``predictions.csv`` and ``model.keras``; returns every plot's name."""
    plot_files = list(evaluation.plot_files)
    first = fitted.members[0]
    plots.training_curves(
        first.history,
        cfg.out_dir / "training_curves.png",
        f"{task.name} {cfg.version} ({cfg.backbone})",
    )
    for m in fitted.members[1:]:
        name = f"training_curves_seed{m.seed}.png"
        plots.training_curves(
            m.history, cfg.out_dir / name, f"{task.name} {cfg.version} (seed {m.seed})"
        )
        plot_files.append(name)
    with (cfg.out_dir / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "path", "source", "true", *[f"p_{c}" for c in task.classes]])
        writer.writerows(evaluation.prediction_rows)
    fitted.inference.save(cfg.out_dir / WEIGHTS_FILE)
    return plot_files


def _early_stopping(cfg: TrainConfig) -> str:
    if cfg.patience is None:
        return "none (fixed number of epochs)"
    monitored = f" (monitored from epoch {cfg.epochs // 2 + 1})" if cfg.schedule == "cosine" else ""
    return f"val_loss, patience {cfg.patience}, best weights restored{monitored}"


def _training_info(cfg: TrainConfig, fitted: Fitted, started: float) -> TrainingInfo:
    members = fitted.members
    first = members[0]
    return TrainingInfo(
        command=cfg.command,
        seed=cfg.seed,
        epochs_max=cfg.epochs,
        epochs_run=len(first.history["loss"]),
        best_epoch=first.best_epoch,
        early_stopping=_early_stopping(cfg),
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        learning_rate=cfg.learning_rate,
        learning_rate_schedule=cfg.schedule,
        weight_decay=cfg.weight_decay if cfg.optimizer == "adamw" else 0.0,
        class_weighting="per-sample weights: classes equal in total; within a class, "
        f"source families weighted by n^-{cfg.source_balance} (source_balance)",
        source_balance=cfg.source_balance,
        limit_per_class=cfg.limit_per_class,
        augmentation=cfg.augment.as_dict(),
        duration_s=time.time() - started,
        machine=machine(),
        history={k: tuple(v) for k, v in first.history.items()},
        ensemble=EnsembleInfo(
            members=len(members),
            rule="logits averaged (one Keras model; Grad-CAM layer = the members' "
            "feature maps concatenated)"
            if len(members) > 1
            else "single model",
            seeds=tuple(
                EnsembleMember(
                    seed=m.seed,
                    epochs_run=len(m.history["loss"]),
                    best_epoch=m.best_epoch,
                    val_macro_auc=m.val_macro_auc,
                )
                for m in members
            ),
        ),
    )


def build_card(
    task: TaskSpec,
    cfg: TrainConfig,
    data: RunData,
    fitted: Fitted,
    calibration: Calibration,
    evaluation: Evaluation,
    plot_files: Sequence[str],
    started: float,
) -> ModelCard:
    from training.legacy.models import gradcam_layer_name

    members, model = fitted.members, fitted.model
    ensemble_note = (
        f"; {len(members)} such models (seeds {members[0].seed}..{members[-1].seed}), "
        "logits averaged"
        if len(members) > 1
        else ""
    )
    targets = _check_targets(task.targets, evaluation.metrics)
    return ModelCard(
        name=task.name,
        version=cfg.version,
        title=task.title,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        research_use_only=True,
        classes=tuple(task.classes),
        input=InputSpec(
            size=cfg.input_size,
            percentiles=DEFAULT_PERCENTILES,
            central_margin=DEFAULT_CENTRAL_MARGIN,
            description=task.input_description,
        ),
        logits_layer="logits",
        temperature=calibration.temperature,
        decision=calibration.decision,
        gradcam_layer=gradcam_layer_name(cfg.backbone),
        architecture=Architecture(
            backbone=cfg.backbone,
            head=cfg.head,
            parameters=int(model.count_params()),
            weights_provenance=_weights_provenance(cfg) + ensemble_note,
            description=model.name,
        ),
        training=_training_info(cfg, fitted, started),
        data=DataInfo(
            data_dir=str(cfg.data_dir),
            manifest_sha256=manifest_sha256(cfg.data_dir),
            split_counts=split_counts(r for r in data.records if r.modality == task.modality),
            used_per_split={
                s: dict(Counter(r.label for r in recs)) for s, recs in data.splits.items()
            },
            train_sources=dict(Counter(f"{r.label}/{r.source}" for r in data.splits["train"])),
        ),
        versions=versions(),
        metrics=evaluation.metrics,
        extra_evaluations=evaluation.extra_evaluations,
        intended_use=task.intended_use,
        limitations=(*_target_limitations(targets), *task.limitations),
        targets=targets,
        plots=tuple(plot_files),
    )


def run_training(task: TaskSpec, cfg: TrainConfig) -> ModelCard:
    """Train, evaluate and write one run; returns the model card as written."""
    import keras
    import tensorflow as tf

    started = time.time()
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)

    data = load_data(task, cfg)
    fitted = fit(task, cfg, data)
    logits = {s: fitted.logits_fn(data.arrays[s]) for s in data.splits if s != "train"}
    calibration = calibrate(task, cfg, logits["val"], data.labels["val"])
    evaluation = evaluate_run(task, cfg, data, fitted, logits, calibration)
    plot_files = write_run_files(task, cfg, fitted, evaluation)
    built = build_card(task, cfg, data, fitted, calibration, evaluation, plot_files, started)
    # The card carries inference parameters (temperature, input size), so it is checksummed too.
    written = card.write(built, cfg.out_dir, (WEIGHTS_FILE, CARD_FILE))
    log(f"wrote {cfg.out_dir} in {time.time() - started:.0f} s")
    return written


def common_arguments(parser: Any, defaults: TrainConfig, name: str) -> None:
    """Command-line options of the trainer-based runs (``train_xray_compact``)."""
    from training.legacy.models import BACKBONES

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


def print_summary(card: ModelCard, splits: Sequence[str] = ("val", "test")) -> None:
    for split in splits:
        m = (card.metrics or {}).get(split)
        if m:
            print(
                f"{split}: accuracy {m['accuracy']:.3f}, macro AUC {m['macro_roc_auc']:.3f}, "
                f"ECE {m['ece']:.3f}"
            )

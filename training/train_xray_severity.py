"""Train the COVID-19 severity head on the X-ray classifier's lung-field features.

    python -m training.train_xray_severity --out models/xray_severity/1.0.0
    (make train-xray-severity)

1. Labels: ``annotations/covid_severity.csv`` (75 ieee COVID-19 radiographs, the mean of three
   radiologists' geographic extent 0-8 and opacity 0-6 scores; Cohen et al., Cureus 2020).
2. Inputs and features as in the node: decoding, the shipped lung segmentation, the lung crop
   (``training.xray_prep``), the shipped classifier's pooled Grad-CAM-layer features, plus the
   lung intensity statistics of ``dicom_node.pipelines.xray.severity``; ``--views - 1``
   augmented views of every scored image are extra training rows (never evaluated).
3. Regressor: PLS on standardised inputs, both scores jointly; the number of components is
   chosen by a patient-grouped inner CV.  Reported: nested patient-grouped 5-fold CV repeated
   ``--repeats`` times (outer folds never seen by the choice), MAE and Pearson r with 95 % CIs,
   against the mean and image-statistics (shortcut) baselines.  The shipped head is fitted on
   all 75 scored images with the components chosen on all of them.
4. The node reports expected scores, ``(1 - p(normal)) *`` the regressor's: the regressor only
   ever saw COVID-19 images and gives normals the COVID-19 average.  Both forms are reported,
   and the expected scores of held-out (test/val split) normals and COVID-19 images without
   ratings.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.domain import XRAY_CLASSES
from dicom_node.pipelines.model_store import find_artefact, load_keras_model
from dicom_node.pipelines.xray.severity import lung_intensity_statistics
from training import severity
from training.data import DEFAULT_DATA_DIR, Record, read_manifest
from training.evaluate import softmax
from training.xray_prep import (
    BATCH,
    CACHE_DIR,
    INPUT_SIZE,
    Prepared,
    cache_key,
    prepare,
)

NAME = "xray_severity"
SCORES = ("geographic_extent", "opacity")
MAXIMA = np.array([8.0, 6.0])
# Rounded extent 0: none; 1-2: every lung under 25 %; 3-4: up to 25-50 %; 5-8: a lung over 50 %.
LEVEL_THRESHOLDS = (0.5, 2.5, 4.5)
SEVERITY_CSV = "annotations/covid_severity.csv"
# Held-out images without ratings whose expected scores the card reports.
REFERENCE_GROUPS = (
    ("test", "normal"),
    ("val", "normal"),
    ("test", "covid"),
    ("test", "pneumonia_bac"),
)


@dataclass(frozen=True)
class Options:
    data_dir: Path
    out_dir: Path
    version: str
    classifier_version: str | None
    views: int
    repeats: int
    seed: int
    command: str


@dataclass
class Features:
    """Per record: classifier features + lung statistics per view, p(class) of view 0."""

    records: list[Record]
    x: np.ndarray  # (n, views, d + 12)
    probabilities: np.ndarray  # (n, classes) of the unaugmented view
    analysable: np.ndarray  # (n,) bool: plausible lung fields
    image_stats: np.ndarray  # (n, 14) whole-image statistics (shortcut baseline)
    classifier: str
    classifier_version: str
    layer: str


def read_scores(data_dir: Path) -> dict[str, tuple[float, float]]:
    with (data_dir / SEVERITY_CSV).open(newline="") as handle:
        return {
            row["path"]: (float(row["geographic_extent_mean"]), float(row["opacity_mean"]))
            for row in csv.DictReader(handle)
        }


def select_records(
    records: Sequence[Record], scores: dict[str, tuple[float, float]]
) -> tuple[list[Record], list[Record]]:
    """(scored, reference): the rated images and the held-out groups without ratings."""
    by_path = {r.path: r for r in records}
    missing = sorted(set(scores) - set(by_path))
    if missing:
        raise SystemExit(f"{SEVERITY_CSV} names images the manifest lacks: {missing[:3]}")
    scored = [by_path[p] for p in scores]
    reference = [
        r
        for r in records
        if r.modality == "xray" and (r.split, r.label) in REFERENCE_GROUPS and r.path not in scores
    ]
    return scored, reference


def _extractor(model: Any, layer: str, logits_layer: str) -> Any:
    """Classifier inputs -> (features pooled as the node pools them, logits)."""
    import keras
    import tensorflow as tf

    pooled = keras.ops.mean(model.get_layer(layer).output, axis=(1, 2))
    both = keras.Model(model.inputs, [pooled, model.get_layer(logits_layer).output])

    @tf.function(input_signature=[tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE, 2), tf.float32)])  # type: ignore[misc,untyped-decorator,unused-ignore]
    def run(images: Any) -> Any:
        return both(images, training=False)

    return run


def extract(
    prepared: Prepared, views_for: Sequence[int], classifier_version: str | None
) -> Features:
    artefact = find_artefact("xray_classifier", version=classifier_version)
    card = artefact.card
    layer = card.gradcam_layer or "lung_features"
    digest = hashlib.sha256(prepared.inputs.tobytes())
    digest.update(prepared.masks.tobytes())
    key = cache_key(inputs=digest.hexdigest(), model=artefact.version, layer=layer, what=NAME)
    cache = CACHE_DIR / f"severity_features_{key}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            x, logits = data["x"], data["logits"]
    else:
        run = _extractor(load_keras_model(artefact), layer, card.logits_layer)
        pairs = [(i, v) for i, n in enumerate(views_for) for v in range(n)]
        rows, logit_rows = [], []
        for start in range(0, len(pairs), BATCH):
            inputs = prepared.model_inputs(pairs[start : start + BATCH])
            pooled, part_logits = run(inputs)
            stats = np.stack([lung_intensity_statistics(m) for m in inputs])
            rows.append(np.concatenate([pooled.numpy(), stats], axis=1))
            logit_rows.append(part_logits.numpy())
        flat, flat_logits = np.concatenate(rows), np.concatenate(logit_rows)
        x = np.zeros((len(views_for), max(views_for), flat.shape[1]), np.float32)
        logits = np.zeros((len(views_for), len(XRAY_CLASSES)), np.float32)
        for (i, v), row, lg in zip(pairs, flat, flat_logits, strict=True):
            x[i, v] = row
            if v == 0:
                logits[i] = lg
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=x, logits=logits)
    for i, n in enumerate(views_for):  # fewer views than the widest: repeat view 0
        x[i, n:] = x[i, 0]
    return Features(
        records=prepared.records,
        x=x,
        probabilities=softmax(logits, card.temperature),
        analysable=np.array([f.problem is None for f in prepared.fields]),
        image_stats=prepared.stats,
        classifier=artefact.name,
        classifier_version=artefact.version,
        layer=layer,
    )


def _baseline(design: severity.Design, x: np.ndarray | None, seed: int) -> np.ndarray:
    """Out-of-fold predictions of the training-fold mean (x None) or of a 2-component PLS on
    ``x`` (n, d) (one repeat, same grouping)."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(design.y)
    for train, test in severity.group_folds(design.groups, severity.FOLDS, rng):
        if x is None:
            out[test] = design.y[train].mean(axis=0)
        else:
            model = severity.fit(x[train], design.y[train], 2)
            out[test] = np.clip(model(x[test]), 0.0, design.maxima)
    return out


def _metrics(
    pred: np.ndarray, design: severity.Design, index: np.ndarray, seed: int
) -> dict[str, Any]:
    groups = [design.groups[i] for i in index]
    return {
        score: severity.score_metrics(pred[index, k], design.y[index, k], groups, seed)
        for k, score in enumerate(SCORES)
    }


def evaluate(features: Features, scored: int, opts: Options) -> dict[str, Any]:
    """Nested CV of the head and the baselines on the first ``scored`` records."""
    ratings = read_scores(opts.data_dir)
    index = np.arange(scored)
    design = severity.Design(
        x=features.x[:scored],
        y=np.array([ratings[r.path] for r in features.records[:scored]]),
        groups=[r.patient_id for r in features.records[:scored]],
        maxima=MAXIMA,
    )
    started = time.time()
    oof, chosen = severity.nested_cv(design, opts.repeats, opts.seed)
    print(f"nested CV in {time.time() - started:.0f} s, components {chosen}", flush=True)
    conditional = oof.mean(axis=0)
    p_normal = features.probabilities[:scored, XRAY_CLASSES.index("normal")]
    expected = conditional * (1.0 - p_normal)[:, np.newaxis]
    per_repeat = [
        {
            score: float(np.abs(oof[r, :, k] - design.y[:, k]).mean())
            for k, score in enumerate(SCORES)
        }
        for r in range(opts.repeats)
    ]
    held_out_split = np.array([r.split != "train" for r in features.records[:scored]])
    stats_x = np.log1p(np.abs(features.image_stats[:scored])) * np.sign(
        features.image_stats[:scored]
    )
    lung_only = features.x[:scored, 0, -12:]
    return {
        "design": design,
        "conditional": conditional,
        "expected": expected,
        "p_normal": p_normal,
        "components_chosen": chosen,
        "metrics": {
            "expected_scores": _metrics(expected, design, index, opts.seed),
            "scores_given_disease": _metrics(conditional, design, index, opts.seed),
            "expected_scores_val_test_split_only": _metrics(
                expected, design, np.flatnonzero(held_out_split), opts.seed
            ),
            "mae_per_repeat_scores_given_disease": per_repeat,
            "baselines": {
                "training_mean": _metrics(
                    _baseline(design, None, opts.seed), design, index, opts.seed
                ),
                "whole_image_statistics_shortcut": _metrics(
                    _baseline(design, stats_x, opts.seed), design, index, opts.seed
                ),
                "lung_intensity_statistics_only": _metrics(
                    _baseline(design, lung_only, opts.seed), design, index, opts.seed
                ),
            },
            "levels": severity.level_agreement(expected[:, 0], design.y[:, 0], LEVEL_THRESHOLDS),
        },
    }


def reference_scores(
    features: Features, scored: int, head: severity.LinearMap
) -> tuple[np.ndarray, dict[str, Any]]:
    """Expected scores of every record under the final head, and a summary per held-out group."""
    given = np.clip(head(features.x[:, 0]), 0.0, MAXIMA)
    p_normal = features.probabilities[:, XRAY_CLASSES.index("normal")]
    expected = given * (1.0 - p_normal)[:, np.newaxis]
    summary: dict[str, Any] = {}
    for split, label in REFERENCE_GROUPS:
        for source in sorted({r.source for r in features.records[scored:]}):
            rows = [
                i
                for i, r in enumerate(features.records)
                if i >= scored
                and (r.split, r.label, r.source) == (split, label, source)
                and features.analysable[i]
            ]
            if not rows:
                continue
            extent = expected[rows, 0]
            levels = np.sum(extent[:, np.newaxis] >= np.asarray(LEVEL_THRESHOLDS), axis=1)
            summary[f"{split}/{label}/{source}"] = {
                "n": len(rows),
                "extent_mean": float(extent.mean()),
                "extent_median": float(np.median(extent)),
                "extent_p90": float(np.percentile(extent, 90)),
                "opacity_mean": float(expected[rows, 1].mean()),
                "level_counts": np.bincount(levels, minlength=4).tolist(),
            }
    return expected, summary


def parse_args(argv: Sequence[str] | None = None) -> Options:
    import shlex
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--classifier-version", default=None, help="default: the newest")
    parser.add_argument("--views", type=int, default=9, help="1 unaugmented + augmented views")
    parser.add_argument("--repeats", type=int, default=10, help="outer CV repeats")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / NAME / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    command = "python -m training.train_xray_severity " + shlex.join(
        list(argv if argv is not None else sys.argv[1:])
    )
    return Options(
        args.data,
        out,
        args.version,
        args.classifier_version,
        args.views,
        args.repeats,
        args.seed,
        command.strip(),
    )


def main(argv: Sequence[str] | None = None) -> None:
    from dicom_node.pipelines.xray.lung_fields import LungSegmenter
    from training.severity_card import write_artefact

    opts = parse_args(argv)
    started = time.time()
    ratings = read_scores(opts.data_dir)
    scored, reference = select_records(read_manifest(opts.data_dir), ratings)
    records = scored + reference
    views_for = [opts.views] * len(scored) + [1] * len(reference)
    prepared = prepare(records, opts.data_dir, LungSegmenter.load(), views_for, seed=opts.seed)
    print(f"prepared {len(records)} images in {time.time() - started:.0f} s", flush=True)
    features = extract(prepared, views_for, opts.classifier_version)
    if not features.analysable[: len(scored)].all():
        bad = [r.path for r, ok in zip(scored, features.analysable, strict=False) if not ok]
        raise SystemExit(f"scored images without plausible lung fields: {bad}")
    results = evaluate(features, len(scored), opts)
    design: severity.Design = results["design"]
    everything = np.arange(len(scored))
    components = severity.choose_components(design, everything, np.random.default_rng(opts.seed))
    head = severity.fit(*design.rows(everything), components)
    expected, groups = reference_scores(features, len(scored), head)
    results["final_components"] = components
    results["metrics"]["held_out_groups"] = groups
    write_artefact(opts, features, len(scored), head, results, expected, time.time() - started)
    print(f"wrote {opts.out_dir} in {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()

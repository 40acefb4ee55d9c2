"""Train the COVID-19 severity head on the X-ray classifier's lung-field features.

    python -m training.train_xray_severity --out models/xray_severity/1.0.0
    (make train-xray-severity)

1. Labels: ``annotations/covid_severity.csv`` (75 ieee COVID-19 radiographs, the mean of three
   radiologists' geographic extent 0-8 and opacity 0-6 scores; Cohen et al., Cureus 2020).
2. Inputs and features as in the node: decoding, the shipped lung segmentation, the lung crop
   (``training.xray_prep``), the shipped classifier's pooled Grad-CAM-layer features, plus the
   lung intensity statistics of ``dicom_node.pipelines.xray.severity``
   (``training.severity_features``); ``views - 1`` augmented views of every scored image are
   extra training rows (never evaluated).
3. Regressor: PLS on standardised inputs, both scores jointly; the number of components is
   chosen by a patient-grouped inner CV.  Reported: nested patient-grouped 5-fold CV repeated
   ``repeats`` times (outer folds never seen by the choice), MAE and Pearson r with 95 % CIs,
   against the mean and image-statistics (shortcut) baselines.  The shipped head is fitted on
   all 75 scored images with the components chosen on all of them.
4. The node reports expected scores, ``(1 - p(normal)) *`` the regressor's: the regressor only
   ever saw COVID-19 images and gives normals the COVID-19 average.  Both forms are reported,
   and the expected scores of held-out (test/val split) normals and COVID-19 images without
   ratings.

The hyper-parameters are in ``training/configs/xray_severity.toml`` (``--config``), recorded in
the card.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.domain import XRAY_CLASSES
from dicom_node.pipelines.model_store import find_artefact
from training import config, severity
from training.config import SeverityConfig
from training.data import DEFAULT_DATA_DIR, Record, read_manifest
from training.provenance import Run, start_run
from training.severity_artefact import write_artefact
from training.severity_features import Features, extract
from training.xray_prep import prepare

__all__ = [
    "NAME",
    "evaluate",
    "main",
    "parse_args",
    "read_scores",
    "reference_scores",
    "select_records",
]

NAME = "xray_severity"
SCORES = ("geographic_extent", "opacity")
MAXIMA = np.array([8.0, 6.0])
SEVERITY_CSV = "annotations/covid_severity.csv"
# Held-out images without ratings whose expected scores the card reports.
REFERENCE_GROUPS = (
    ("test", "normal"),
    ("val", "normal"),
    ("test", "covid"),
    ("test", "pneumonia_bac"),
)


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


def _baseline(design: severity.Design, x: np.ndarray | None, cfg: SeverityConfig) -> np.ndarray:
    """Out-of-fold predictions of the training-fold mean (x None) or of a 2-component PLS on
    ``x`` (n, d) (one repeat, same grouping)."""
    rng = np.random.default_rng(cfg.seed)
    out = np.zeros_like(design.y)
    for train, test in severity.group_folds(design.groups, cfg.folds, rng):
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


def evaluate(
    features: Features, scored: int, data_dir: Path, cfg: SeverityConfig
) -> dict[str, Any]:
    """Nested CV of the head and the baselines on the first ``scored`` records."""
    ratings = read_scores(data_dir)
    index = np.arange(scored)
    design = severity.Design(
        x=features.x[:scored],
        y=np.array([ratings[r.path] for r in features.records[:scored]]),
        groups=[r.patient_id for r in features.records[:scored]],
        maxima=MAXIMA,
    )
    started = time.time()
    oof, chosen = severity.nested_cv(design, cfg.repeats, cfg.seed, cfg.components_grid, cfg.folds)
    print(f"nested CV in {time.time() - started:.0f} s, components {chosen}", flush=True)
    conditional = oof.mean(axis=0)
    p_normal = features.probabilities[:scored, XRAY_CLASSES.index("normal")]
    expected = conditional * (1.0 - p_normal)[:, np.newaxis]
    per_repeat = [
        {
            score: float(np.abs(oof[r, :, k] - design.y[:, k]).mean())
            for k, score in enumerate(SCORES)
        }
        for r in range(cfg.repeats)
    ]
    held_out_split = np.array([r.split != "train" for r in features.records[:scored]])
    stats_x = np.log1p(np.abs(features.image_stats[:scored])) * np.sign(
        features.image_stats[:scored]
    )
    lung_only = features.x[:scored, 0, -12:]
    seed = cfg.seed
    return {
        "design": design,
        "conditional": conditional,
        "expected": expected,
        "p_normal": p_normal,
        "components_chosen": chosen,
        "metrics": {
            "expected_scores": _metrics(expected, design, index, seed),
            "scores_given_disease": _metrics(conditional, design, index, seed),
            "expected_scores_val_test_split_only": _metrics(
                expected, design, np.flatnonzero(held_out_split), seed
            ),
            "mae_per_repeat_scores_given_disease": per_repeat,
            "baselines": {
                "training_mean": _metrics(_baseline(design, None, cfg), design, index, seed),
                "whole_image_statistics_shortcut": _metrics(
                    _baseline(design, stats_x, cfg), design, index, seed
                ),
                "lung_intensity_statistics_only": _metrics(
                    _baseline(design, lung_only, cfg), design, index, seed
                ),
            },
            "levels": severity.level_agreement(
                expected[:, 0], design.y[:, 0], cfg.level_thresholds
            ),
        },
    }


def reference_scores(
    features: Features, scored: int, head: severity.LinearMap, thresholds: Sequence[float]
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
            levels = np.sum(extent[:, np.newaxis] >= np.asarray(thresholds), axis=1)
            summary[f"{split}/{label}/{source}"] = {
                "n": len(rows),
                "extent_mean": float(extent.mean()),
                "extent_median": float(np.median(extent)),
                "extent_p90": float(np.percentile(extent, 90)),
                "opacity_mean": float(expected[rows, 1].mean()),
                "level_counts": np.bincount(levels, minlength=4).tolist(),
            }
    return expected, summary


def parse_args(argv: Sequence[str] | None = None) -> tuple[Run, SeverityConfig, str | None]:
    """(the run, its configuration, the classifier version: None for the newest)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--version", default="1.0.0")
    config.add_argument(parser, NAME)
    parser.add_argument("--classifier-version", default=None, help="default: the newest")
    parser.add_argument(
        "--views", type=int, default=None, help="1 unaugmented + augmented views per rated image"
    )
    parser.add_argument("--repeats", type=int, default=None, help="outer CV repeats")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    cfg = config.override(
        config.load(SeverityConfig, args.config),
        views=args.views,
        repeats=args.repeats,
        seed=args.seed,
    )
    run = start_run(NAME, "training.train_xray_severity", args, argv)
    return run, cfg, args.classifier_version


def main(argv: Sequence[str] | None = None) -> None:
    from dicom_node.pipelines.xray.lung_fields import LungSegmenter

    run, cfg, classifier_version = parse_args(argv)
    started = time.time()
    ratings = read_scores(run.data_dir)
    scored, reference = select_records(read_manifest(run.data_dir), ratings)
    records = scored + reference
    views_for = [cfg.views] * len(scored) + [1] * len(reference)
    # The classifier whose features the head reads, at its own input size.
    classifier = find_artefact("xray_classifier", version=classifier_version)
    prepared = prepare(
        records,
        run.data_dir,
        LungSegmenter.load(),
        views_for,
        size=classifier.card.input.size,
        seed=cfg.seed,
        aug=cfg.augment,
    )
    print(f"prepared {len(records)} images in {time.time() - started:.0f} s", flush=True)
    features = extract(prepared, views_for, classifier)
    if not features.analysable[: len(scored)].all():
        bad = [r.path for r, ok in zip(scored, features.analysable, strict=False) if not ok]
        raise SystemExit(f"scored images without plausible lung fields: {bad}")
    results = evaluate(features, len(scored), run.data_dir, cfg)
    design: severity.Design = results["design"]
    everything = np.arange(len(scored))
    rng = np.random.default_rng(cfg.seed)
    components = severity.choose_components(design, everything, rng, cfg.components_grid, cfg.folds)
    head = severity.fit(*design.rows(everything), components)
    expected, groups = reference_scores(features, len(scored), head, cfg.level_thresholds)
    results["final_components"] = components
    results["metrics"]["held_out_groups"] = groups
    duration = time.time() - started
    write_artefact(run, cfg, features, len(scored), head, results, expected, duration)
    print(f"wrote {run.out_dir} in {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()

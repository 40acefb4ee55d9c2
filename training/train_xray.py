"""Train the chest X-ray classifier that looks at the lung fields (COVID-19 / normal / bacterial).

    python -m training.train_xray --out models/xray_classifier/2.0.0      # make train-xray

1. Every radiograph goes through the node's code: decoding, the shipped lung segmentation
   (``models/lung_segmentation``) and ``lung_crop_input`` (lung box + margin, faded to black
   away from the lungs).  Images whose lungs are not found are "not analysable", as in the node.
2. ImageNet EfficientNet-Lite0 (converted from the Apache-2.0 PyPI wheel by
   ``training.convert_backbone``), frozen: pooled ``top_activation`` features of the
   unaugmented and ``views - 1`` augmented views of each image.
3. The head (logistic regression, class- and source-balanced) is chosen by
   leave-one-source-out validation on train+val: the regularisation with the best pooled
   out-of-source COVID-19-vs-normal ROC AUC, and the COVID-19 triage weight that reaches
   ``covid_sensitivity`` on the out-of-source COVID-19 images.  The final head is fitted on
   the train split; its temperature on val; test is evaluated once.
4. Written next to the weights: the feature statistics of the out-of-distribution check
   (``ood.npz``), the card (LOSO table, shortcut probe, Grad-CAM heat inside the lungs), plots.

The hyper-parameters are in ``training/configs/xray_classifier.toml`` (``--config``), recorded
in the card.  See ``training/README.md`` for the choices.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.domain import XRAY_CLASSES
from training import config
from training.config import XrayConfig
from training.data import DEFAULT_DATA_DIR, Record, read_manifest
from training.evaluate import decide, evaluate, fit_temperature, softmax
from training.provenance import Run, start_run
from training.xray_artefact import write_artefact
from training.xray_head import (
    Fitted,
    Head,
    Selection,
    covid_vs_normal_auc,
    covid_weight_for,
    fit_views,
    leave_one_source_out,
    ood_distance,
    ood_statistics,
    rates_by_source,
    shortcut_probe,
)
from training.xray_prep import (
    CACHE_DIR,
    FEATURE_LAYER,
    Dataset,
    cache_key,
    feature_extractor,
    lung_feature_model,
    pooled_features,
    prepare,
)

__all__ = [
    "NAME",
    "build_keras_model",
    "evaluate_split",
    "fit_final",
    "heat_in_lungs",
    "load_dataset",
    "loso_report",
    "main",
    "not_analysable_by_source",
    "ood_report",
    "out_of_set_rates",
    "select_head",
    "within_source_auc",
]

NAME = "xray_classifier"


def _limit(records: list[Record], limit: int | None) -> list[Record]:
    if limit is None:
        return records
    taken: dict[tuple[str, str, str], int] = {}
    kept = []
    for r in records:
        key = (r.split, r.label, r.family)
        if taken.get(key, 0) < limit:
            kept.append(r)
            taken[key] = taken.get(key, 0) + 1
    return kept


def load_dataset(run: Run, cfg: XrayConfig, limit_per_class: int | None) -> Dataset:
    from dicom_node.pipelines.xray.lung_fields import LungSegmenter
    from training.convert_backbone import imagenet_backbone

    records = [r for r in read_manifest(run.data_dir) if r.modality == "xray"]
    records = _limit(records, limit_per_class)
    views_for = [
        cfg.views if r.label in XRAY_CLASSES and r.split in ("train", "val") else 1 for r in records
    ]
    segmenter = LungSegmenter.load()
    started = time.time()
    prepared = prepare(
        records,
        run.data_dir,
        segmenter,
        views_for,
        size=cfg.input_size,
        seed=cfg.seed,
        aug=cfg.augment,
    )
    print(f"prepared {len(records)} images in {time.time() - started:.0f} s", flush=True)
    # Keyed by the inputs themselves: a new segmentation model or preprocessing misses the cache.
    digest = hashlib.sha256(prepared.inputs.tobytes())
    digest.update(prepared.masks.tobytes())
    key = cache_key(inputs=digest.hexdigest(), layer=FEATURE_LAYER, model="lung_pool")
    cache = CACHE_DIR / f"xray_features_{key}.npz"
    if cache.is_file():
        features = np.load(cache)["features"]
    else:
        size = cfg.input_size
        model = lung_feature_model(imagenet_backbone((size, size, 1)))
        extract = feature_extractor(model)
        started = time.time()
        features = pooled_features(extract, prepared, views_for)
        print(f"features of {features.shape} in {time.time() - started:.0f} s", flush=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, features=features)
    # Records with fewer views than the widest: repeat view 0 so every row has `views` views.
    for i, n in enumerate(views_for):
        features[i, n:] = features[i, 0]
    return Dataset(records, prepared, features)


def select_head(data: Dataset, cfg: XrayConfig) -> Selection:
    dev = data.rows("train") | data.rows("val")
    extra = (data.rows("train", cfg.out_of_set) | data.rows("val", cfg.out_of_set)) & ~dev
    y, fam = data.y, np.asarray(data.families)
    grid, best = [], None
    for source_balance in cfg.source_balance_grid:
        for c in cfg.c_grid:
            logits, extra_logits = leave_one_source_out(
                data.features[dev],
                y[dev],
                fam[dev].tolist(),
                XRAY_CLASSES,
                c,
                source_balance,
                np.ones(int(dev.sum()), bool),
                data.features[extra, 0],
                fam[extra].tolist(),
            )
            probs = softmax(logits)
            row = {
                "c": c,
                "source_balance": source_balance,
                "loso_within_source_macro_auc": within_source_auc(probs, y[dev], fam[dev]),
                "loso_covid_vs_normal_auc": covid_vs_normal_auc(probs, y[dev], XRAY_CLASSES),
                "loso_macro_auc": _macro_auc(probs, y[dev]),
            }
            grid.append(row)
            print(json.dumps(row), flush=True)
            score = (row["loso_within_source_macro_auc"], row["loso_macro_auc"])
            if best is None or score > best[0]:
                best = (score, c, source_balance, logits, extra_logits)
    assert best is not None
    _, c, sb, logits, extra_logits = best
    return Selection(c, sb, grid, logits, extra_logits)


def within_source_auc(probs: np.ndarray, y: np.ndarray, families: np.ndarray) -> float:
    """Mean macro ROC AUC inside each held-out source that has two classes or more.

    Pooled across folds, out-of-source scores mix heads with different calibrations, and with
    this data's confounding (removing a source removes most of a class-and-age group) the pooled
    AUC says more about the confounding than about the head; the ranking inside an unseen
    source is what should transfer.
    """
    aucs = [
        _macro_auc(probs[families == f], y[families == f])
        for f in sorted(set(families.tolist()))
        if len(set(y[families == f].tolist())) > 1
    ]
    return float(np.mean(aucs)) if aucs else math.nan


def _macro_auc(probs: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    present = sorted(set(y.tolist()))
    aucs = [roc_auc_score(y == k, probs[:, k]) for k in present]
    return float(np.mean(aucs))


def fit_final(data: Dataset, sel: Selection, covid_sensitivity: float) -> Fitted:
    """The head on the train split; temperature and the COVID-19 triage weight on val."""
    y, fam = data.y, data.families
    train, val = data.rows("train"), data.rows("val")
    head = fit_views(data.features, y, fam, XRAY_CLASSES, sel.c, sel.source_balance, train)
    val_logits = head.logits(data.features[val, 0])
    temperature = fit_temperature(val_logits, y[val])
    k = XRAY_CLASSES.index("covid")
    weights = np.ones(len(XRAY_CLASSES))
    weights[k] = covid_weight_for(softmax(val_logits / temperature), y[val], k, covid_sensitivity)
    return Fitted(head, temperature, weights)


def build_keras_model(head: Head, size: int) -> Any:
    """The lung feature model + the head's Dense ``logits`` + softmax (Grad-CAM reaches
    ``lung_features`` by name)."""
    import keras

    from training.convert_backbone import imagenet_backbone

    features = lung_feature_model(imagenet_backbone((size, size, 1)))
    logits = keras.layers.Dense(len(XRAY_CLASSES), name="logits")(features.output)
    probs = keras.layers.Softmax(name="probabilities")(logits)
    model = keras.Model(features.inputs, probs, name="efficientnet_lite0_lungs")
    model.get_layer("logits").set_weights([head.kernel, head.bias])
    model.trainable = False
    return model


def heat_in_lungs(model: Any, data: Dataset, rows: np.ndarray, temperature: float) -> np.ndarray:
    """Fraction of each image's Grad-CAM heat inside its lung mask (in the input's space; the
    crop is a per-axis scaling of the source, so the fraction is the same there)."""
    from PIL import Image

    from dicom_node.pipelines.xray.gradcam import GradCam

    cam = GradCam(model, layer_name=FEATURE_LAYER, logits_layer="logits", temperature=temperature)
    idx = np.flatnonzero(rows)
    size = data.prepared.size
    out = np.zeros(len(idx))
    for start in range(0, len(idx), 16):
        part = idx[start : start + 16]
        cams = cam(data.prepared.model_inputs([(int(i), 0) for i in part])).cams
        for j, i in enumerate(part):
            heat = np.asarray(
                Image.fromarray(cams[j].astype(np.float32), mode="F").resize(
                    (size, size), Image.Resampling.BILINEAR
                )
            ).clip(0.0, None)
            total = float(heat.sum())
            inside = heat[data.prepared.masks[i, 0]].sum()
            out[start + j] = float(inside / total) if total else 0.0
    return out


def evaluate_split(
    data: Dataset, fitted: Fitted, split: str
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    rows = data.rows(split)
    logits = fitted.head.logits(data.features[rows, 0])
    probs = softmax(logits / fitted.temperature)
    recs = [r for r, keep in zip(data.records, rows, strict=True) if keep]
    metrics = evaluate(
        data.y[rows],
        probs,
        XRAY_CLASSES,
        [r.patient_id for r in recs],
        [r.family for r in recs],
        weights=fitted.weights.tolist(),
    )
    metrics["covid_vs_normal_auc"] = covid_vs_normal_auc(probs, data.y[rows], XRAY_CLASSES)
    adults = np.array([(r.age is None or r.age >= 18) for r in recs])
    k_covid, k_normal = XRAY_CLASSES.index("covid"), XRAY_CLASSES.index("normal")
    pred = decide(probs, fitted.weights)
    normal_adult = (
        (data.y[rows] == k_normal) & adults & np.array([r.family != "kaggle" for r in recs])
    )
    metrics["adult_normals_not_labelled_covid"] = (
        float((pred[normal_adult] != k_covid).mean()) if normal_adult.any() else None
    )
    metrics["adult_normals_n"] = int(normal_adult.sum())
    return metrics, probs, rows


def not_analysable_by_source(data: Dataset) -> dict[str, Any]:
    table: dict[str, dict[str, int]] = {}
    for r, f in zip(data.records, data.prepared.fields, strict=True):
        entry = table.setdefault(f"{r.family}/{r.label}", {"n": 0, "not_analysable": 0})
        entry["n"] += 1
        entry["not_analysable"] += int(f.problem is not None)
    return dict(sorted(table.items()))


def out_of_set_rates(
    data: Dataset, fitted: Fitted, split: str, out_of_set: tuple[str, ...]
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for label in out_of_set:
        rows = data.rows(split, (label,))
        if not rows.any():
            continue
        probs = softmax(fitted.head.logits(data.features[rows, 0]) / fitted.temperature)
        counts = np.bincount(decide(probs, fitted.weights), minlength=len(XRAY_CLASSES))
        result[label] = {
            "n": int(rows.sum()),
            "labelled": {
                c: round(int(n) / int(rows.sum()), 3)
                for c, n in zip(XRAY_CLASSES, counts, strict=True)
            },
        }
    return result


def loso_report(
    data: Dataset, sel: Selection, fitted: Fitted, out_of_set: tuple[str, ...]
) -> dict[str, Any]:
    dev = data.rows("train") | data.rows("val")
    y, fam = data.y[dev], np.asarray(data.families)[dev]
    probs = softmax(sel.loso_logits / fitted.temperature)
    table = rates_by_source(probs, y, fam.tolist(), XRAY_CLASSES, fitted.weights)
    report: dict[str, Any] = {
        "pooled_covid_vs_normal_auc": covid_vs_normal_auc(probs, y, XRAY_CLASSES),
        "within_source_macro_auc": within_source_auc(probs, y, fam),
        "within_source_auc": {
            f: _macro_auc(probs[fam == f], y[fam == f])
            for f in sorted(set(fam.tolist()))
            if len(set(y[fam == f].tolist())) > 1
        },
        "pooled_macro_auc": _macro_auc(probs, y),
        "per_held_out_source": table,
        "grid": sel.grid,
    }
    k = XRAY_CLASSES.index("covid")
    pred = decide(probs, fitted.weights)
    report["pooled_covid_sensitivity"] = float((pred[y == k] == k).mean())
    normal = y == XRAY_CLASSES.index("normal")
    report["pooled_normals_not_labelled_covid"] = float((pred[normal] != k).mean())
    if sel.loso_extra_logits is not None:
        extra_rows = (data.rows("train", out_of_set) | data.rows("val", out_of_set)) & ~(
            data.rows("train") | data.rows("val")
        )
        labels = np.array([r.label for r in data.records])[extra_rows]
        extra_pred = decide(softmax(sel.loso_extra_logits / fitted.temperature), fitted.weights)
        for label in out_of_set:
            m = labels == label
            if m.any():
                report[f"{label}_not_labelled_covid"] = float((extra_pred[m] != k).mean())
    return report


def ood_report(
    data: Dataset, cfg: XrayConfig
) -> tuple[dict[str, np.ndarray], float, dict[str, Any]]:
    everything = tuple(sorted({r.label for r in data.records}))
    train = data.rows("train", everything)
    stats = ood_statistics(data.features[train, 0], k=cfg.ood_components)
    val = data.rows("val", everything)
    distances = ood_distance(data.features[val, 0], stats)
    threshold = float(np.quantile(distances, cfg.ood_quantile)) * cfg.ood_margin
    test = data.rows("test", everything)
    test_d = ood_distance(data.features[test, 0], stats)
    report = {
        "components": int(stats["components"].shape[1]),
        "threshold": threshold,
        "rule": f"{cfg.ood_margin} x the {cfg.ood_quantile} quantile of validation "
        "radiographs' distances",
        "val_median": float(np.median(distances)),
        "test_median": float(np.median(test_d)),
        "test_above_threshold": float((test_d > threshold).mean()),
    }
    return stats, threshold, report


def parse_args(argv: list[str] | None) -> tuple[Run, XrayConfig, int | None]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--version", default="2.0.0")
    config.add_argument(parser, NAME)
    parser.add_argument(
        "--views", type=int, default=None, help="views per train/val image (1 = no augmentation)"
    )
    parser.add_argument(
        "--covid-sensitivity",
        type=float,
        default=None,
        help="validation COVID-19 sensitivity the triage weight is fitted to",
    )
    parser.add_argument(
        "--limit-per-class", type=int, default=None, help="per split, class and source (quick runs)"
    )
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    cfg = config.override(
        config.load(XrayConfig, args.config),
        views=args.views,
        covid_sensitivity=args.covid_sensitivity,
        seed=args.seed,
    )
    run = start_run(NAME, "training.train_xray", args, argv)
    return run, cfg, args.limit_per_class


def main(argv: list[str] | None = None) -> int:
    run, cfg, limit_per_class = parse_args(argv)
    started = time.time()
    data = load_dataset(run, cfg, limit_per_class)
    sel = select_head(data, cfg)
    fitted = fit_final(data, sel, cfg.covid_sensitivity)
    model = build_keras_model(fitted.head, cfg.input_size)
    results: dict[str, Any] = {"metrics": {}, "probs": {}}
    for split in ("val", "test"):
        metrics, probs, rows = evaluate_split(data, fitted, split)
        metrics["heat_in_lungs"] = heat_in_lungs(model, data, rows, fitted.temperature)
        results["metrics"][split] = metrics
        results["probs"][split] = (probs, rows)
        results.setdefault("out_of_set", {})[split] = out_of_set_rates(
            data, fitted, split, cfg.out_of_set
        )
    dev = data.rows("train") | data.rows("val")
    results["loso"] = loso_report(data, sel, fitted, cfg.out_of_set)
    results["probe"] = shortcut_probe(
        data.prepared.stats[dev],
        data.features[dev, 0],
        data.y[dev],
        np.asarray(data.families)[dev].tolist(),
        [r.patient_id for r, keep in zip(data.records, dev, strict=True) if keep],
        XRAY_CLASSES,
    )
    results["not_analysable"] = not_analysable_by_source(data)
    stats, threshold, results["ood"] = ood_report(data, cfg)
    duration = time.time() - started
    write_artefact(run, cfg, data, sel, fitted, model, results, stats, threshold, duration)
    test = results["metrics"]["test"]
    print(
        json.dumps(
            {
                "out": str(run.out_dir),
                "test_macro_auc": test["macro_roc_auc"],
                "test_covid_sensitivity": test["per_class"]["covid"]["sensitivity"],
                "test_ece": test["ece"],
                "test_heat_in_lungs_median": float(np.median(test["heat_in_lungs"])),
                "loso_covid_vs_normal_auc": results["loso"]["pooled_covid_vs_normal_auc"],
                "loso_normals_not_covid": results["loso"]["pooled_normals_not_labelled_covid"],
                "probe": results["probe"],
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

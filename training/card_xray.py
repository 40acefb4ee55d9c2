"""``model_card.md`` of the lung-field X-ray classifier, rendered from its typed card.

Called by :mod:`training.card` for cards with ``lung_crop``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dicom_node.pipelines.model_card import ModelCard

__all__ = ["markdown"]


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _loso_table(loso: Mapping[str, Any], classes: list[str]) -> list[str]:
    lines = [
        "| held-out source | true class | n | "
        + " | ".join(f"labelled {c}" for c in classes)
        + " |",
        "|---|---|---:|" + "---:|" * len(classes),
    ]
    for source, rows in loso["per_held_out_source"].items():
        for true, row in rows.items():
            cells = " | ".join(_f(row["labelled"][c], 2) for c in classes)
            lines.append(f"| {source} | {true} | {row['n']} | {cells} |")
    return lines


def _split_lines(name: str, m: Mapping[str, Any], classes: list[str]) -> list[str]:
    lo, hi = m["macro_roc_auc_ci95"]
    lines = [
        f"### {name} (n = {m['n']})",
        "",
        f"- Macro one-vs-rest ROC AUC {_f(m['macro_roc_auc'])} "
        f"(95% CI {_f(lo)}-{_f(hi)}); "
        f"COVID-19 vs normal ROC AUC {_f(m.get('covid_vs_normal_auc'))}",
        f"- Accuracy at the label rule {_f(m['accuracy'])}; ECE {_f(m['ece'])}",
        f"- Adult normals (NIH and ieee, age >= 18 or unknown) not labelled COVID-19: "
        f"{_f(m.get('adult_normals_not_labelled_covid'))} of {m.get('adult_normals_n')}",
        f"- Grad-CAM heat inside the lung fields: median {_f(m['heat_in_lungs']['median'])}, "
        f"{_f(m['heat_in_lungs']['fraction_at_least_0.8'])} of images at least 0.8",
        "",
        "| class | n | sensitivity | specificity | ROC AUC |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in classes:
        pc = m["per_class"][c]
        cells = [pc["n"], _f(pc["sensitivity"]), _f(pc["specificity"]), _f(pc["roc_auc"])]
        lines.append(f"| {c} | " + " | ".join(str(v) for v in cells) + " |")
    lines += ["", "Per source (accuracy at the label rule; predicted labels by true class):", ""]
    for source, s in m["per_source"].items():
        rows = json.dumps(s["predicted_by_true_class"])
        lines.append(f"- {source}: n {s['n']}, accuracy {_f(s['accuracy'])}, `{rows}`")
    return [*lines, ""]


def markdown(card: ModelCard) -> str:
    classes = list(card.classes)
    arch, data, extra = card.architecture, card.data, dict(card.extra_evaluations or {})
    assert arch is not None and data is not None
    weights = dict(zip(classes, [round(w, 3) for w in card.decision.weights], strict=True))
    lines = [
        f"# Model card: {card.name} {card.version}",
        "",
        f"**{card.title}.** Research use only: not for diagnosis or any clinical decision.",
        "",
        "## Intended use",
        "",
        card.intended_use or "",
        "",
        "## Model",
        "",
        f"- {arch.description}: {arch.parameters:,} parameters",
        f"- Weights: {arch.weights_provenance}",
        f"- Classes (output order): {', '.join(classes)}",
        f"- Input: {card.input.size}x{card.input.size} grey, {card.input.description}",
        f"- Temperature (fitted on validation): {_f(card.temperature)}",
        f"- Label rule: {card.decision.rule}; weights {weights}, "
        f"fitted on {card.decision.fitted_on}"
        + (
            f" for COVID-19 sensitivity >= {card.decision.target.sensitivity}"
            if card.decision.target
            else ""
        ),
        "- When the rule says COVID-19 but COVID-19 is not the top probability, the node labels "
        "it a suspicion at the triage threshold.",
        f"- Grad-CAM layer `{card.gradcam_layer}`; out-of-distribution threshold "
        f"{_f(card.ood.threshold if card.ood else None, 1)} "
        f"({card.ood.description if card.ood else ''})",
        "",
        "## Training",
        "",
        extra.pop("Training").description if "Training" in extra else "",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in (card.versions or {}).items())}",
        "",
        "## Data",
        "",
        f"- `manifest.csv` SHA-256 `{data.manifest_sha256}`",
        f"- Used per split (analysable, model classes): `{json.dumps(data.used_per_split)}`",
        f"- Training images per class/source: `{json.dumps(data.train_sources)}`",
        "- Sources and licences: ieee (CC BY-NC-SA / CC BY / other, per image), Hannover mhh "
        "(CC BY 3.0), NIH ChestX-ray (no restrictions per NIH, attribution requested), Kaggle "
        "pediatric (CC BY 4.0 per upstream); see `../shared/data/README.md`. NIH `pneumonia_nos` "
        "is not trained on (cause not stated; it must not be pooled with bacterial pneumonia) "
        "but is evaluated, as is viral pneumonia.",
        "",
        "## Quality targets",
        "",
        "| split | metric | target | result | |",
        "|---|---|---|---|---|",
    ]
    for t in card.targets or ():
        verdict = "met" if t.met else "**not met**"
        lines.append(f"| {t.split} | {t.metric} | >= {t.minimum:.2f} | {_f(t.value)} | {verdict} |")
    lines += ["", "## Results", ""]
    for split, metrics in (card.metrics or {}).items():
        lines += _split_lines(split, metrics, classes)
    loso = extra.pop("Leave one source out", None)
    if loso is not None:
        r = loso.results
        lines += [
            "### Leave one source out",
            "",
            loso.description,
            "",
            f"Inside each held-out source: macro ROC AUC {json.dumps(r['within_source_auc'])}. "
            f"Pooled: COVID-19 vs normal ROC AUC {_f(r['pooled_covid_vs_normal_auc'])}, "
            f"macro ROC AUC {_f(r['pooled_macro_auc'])}, "
            f"COVID-19 sensitivity {_f(r['pooled_covid_sensitivity'])}, "
            f"normals not labelled COVID-19 {_f(r['pooled_normals_not_labelled_covid'])}, NIH "
            f"pneumonia not labelled COVID-19 {_f(r.get('pneumonia_nos_not_labelled_covid'))}.",
            "",
            *_loso_table(r, classes),
            "",
            "Grid (regularisation C, source balance; out-of-source ROC AUC; the first AUC "
            "column chose):",
            "",
            "| C | source balance | within held-out source | pooled COVID-19 vs normal "
            "| pooled macro |",
            "|---:|---:|---:|---:|---:|",
            *[
                f"| {g['c']} | {g['source_balance']} | {_f(g['loso_within_source_macro_auc'])} | "
                f"{_f(g['loso_covid_vs_normal_auc'])} | {_f(g['loso_macro_auc'])} |"
                for g in r["grid"]
            ],
            "",
        ]
    for title, section in extra.items():
        lines += [
            f"### {title}",
            "",
            section.description,
            "",
            f"```json\n{json.dumps(section.results, indent=1)}\n```",
            "",
        ]
    lines += ["## Limitations", "", *[f"- {item}" for item in card.limitations or ()]]
    lines += ["", "## Plots", "", *[f"- [{name}]({name})" for name in card.plots or ()], ""]
    return "\n".join(lines) + "\n"

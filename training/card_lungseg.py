"""``model_card.md`` of the lung segmentation model, rendered from its typed card.

Called by :mod:`training.card` for cards named ``lung_segmentation``.
"""

from __future__ import annotations

from dicom_node.pipelines.model_card import ModelCard

__all__ = ["markdown"]


def markdown(card: ModelCard) -> str:
    metrics = card.metrics or {}
    arch = card.architecture
    lines = [
        f"# {card.title} ({card.name} {card.version})",
        "",
        f"Created {card.created}. Research use only.",
        "",
        f"**Intended use.** {card.intended_use}",
        "",
        "## Model",
        "",
        f"- {arch.backbone if arch else ''}; head: {arch.head if arch else ''}; "
        f"{arch.parameters if arch else 0:,} parameters",
        f"- Weights: {arch.weights_provenance if arch else ''}",
        f"- Input: {card.input.size}x{card.input.size} grey, {card.input.description}",
        f"- Decision: {card.decision.rule} (fitted on {card.decision.fitted_on})",
        "",
        "## Dice at source pixels (post-processed mask vs lungVAE mask)",
        "",
        "| split | n | mean | median | min |",
        "|---|---:|---:|---:|---:|",
    ]
    for split in ("val", "test"):
        d = metrics[split]["dice"]
        lines.append(f"| {split} | {d['n']} | {d['mean']} | {d['median']} | {d['min']} |")
    rules = metrics["problem_rules"]
    lines += ["", "## Problem rules", "", "Limits (`dicom_node.pipelines.xray.lung_fields`):", ""]
    lines += [f"- `{k}` = {v}" for k, v in rules["limits"].items()]
    lines += [
        "",
        "Measured (train/val radiographs per source; negatives):",
        "",
        "| group | n | passed | two regions | area (two regions) | min confidence | problems |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    for name, m in rules["measured"].items():
        lo, hi = m["area_fraction_two_components_min_max"]
        lines.append(
            f"| {name} | {m['n']} | {m['passed']} | {m['two_components']} | {lo}-{hi} | "
            f"{m['confidence_min']} | {'; '.join(m['problems'])} |"
        )
    training = metrics["training"]
    lines += ["", "## Training", ""]
    lines += [
        f"- {k}: {v}" for k, v in training.items() if k not in ("val_dice_per_epoch", "config")
    ]
    if "config" in training:  # cards written since the hyper-parameters moved to a file
        config = training["config"]
        lines.append(f"- config: `{config['file']}` (SHA-256 {config['sha256'][:16]}...)")
    if card.data is not None:
        lines += ["", "## Data", ""]
        lines += [f"- {k}: {v}" for k, v in card.data.used_per_split.items()]
        lines.append(f"- manifest sha256 {card.data.manifest_sha256}")
    lines += ["", "## Limitations", ""]
    lines += [f"- {item}" for item in card.limitations or ()]
    return "\n".join(lines) + "\n"

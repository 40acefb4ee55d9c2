"""Train the CT slice classifier (COVID-19 vs non-COVID) on the UCSD COVID-CT slices.

    python -m training.train_ct --out models/ct_slice_classifier/1.0.0     # the shipped default

Besides the manifest's val/test splits, every run also scores the real TCIA CT DICOM slices
(``ct_dicom``, all COVID-19) through the node's HU path (body crop, lung window), as a check of
DICOM rendering on data from outside the training source.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.pixels.processing import apply_modality_lut

from dicom_node.model_card import CtInputSpec
from dicom_node.preprocessing import LUNG_WINDOW_HU, hu_slice_to_display, to_model_input
from training.augment import AugmentConfig
from training.data import DEFAULT_DATA_DIR, read_manifest
from training.evaluate import softmax, wilson_ci
from training.trainer import (
    TaskSpec,
    TrainConfig,
    command_line,
    common_arguments,
    config_from_args,
    print_summary,
    run_training,
)

NAME = "ct_slice_classifier"
CT_CLASSES = ("covid", "noncovid")


def _orientation(ds: pydicom.Dataset) -> str:
    """axial / coronal / sagittal from Image Orientation (Patient)."""
    iop = [float(v) for v in ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    normal = np.abs(np.cross(iop[:3], iop[3:]))
    return ("sagittal", "coronal", "axial")[int(np.argmax(normal))]


def evaluate_ct_dicom(
    logits_fn: Callable[[np.ndarray], np.ndarray],
    temperature: float,
    data_dir: Path,
    classes: Sequence[str],
    input_size: int,
) -> dict[str, Any]:
    """P(covid) on the real CT DICOM slices, all from COVID-19 patients (sensitivity only)."""
    records = [r for r in read_manifest(data_dir) if r.modality == "ct_dicom"]
    inputs, rows = [], []
    for record in records:
        ds = pydicom.dcmread(data_dir / record.path)
        hu = apply_modality_lut(ds.pixel_array, ds)
        inputs.append(to_model_input(hu_slice_to_display(hu, LUNG_WINDOW_HU), input_size))
        rows.append((record.path, record.split, _orientation(ds)))
    if not inputs:
        return {}
    probs = softmax(logits_fn(np.stack(inputs)), temperature)[:, list(classes).index("covid")]
    result: dict[str, Any] = {}
    for view in ("all", "axial", "coronal", "sagittal"):
        chosen = [i for i, r in enumerate(rows) if view in ("all", r[2])]
        hits = int(sum(probs[i] >= 0.5 for i in chosen))
        result[view] = {
            "n": len(chosen),
            "called_covid": hits,
            "sensitivity": hits / len(chosen) if chosen else None,
            "sensitivity_ci95": list(wilson_ci(hits, len(chosen))),
            "median_p_covid": float(np.median(probs[chosen])) if chosen else None,
        }
    result["slices"] = [
        {"path": path, "split": split, "orientation": view, "p_covid": round(float(p), 4)}
        for (path, split, view), p in zip(rows, probs, strict=True)
    ]
    return result


CT_TASK = TaskSpec(
    name=NAME,
    title="CT slice classifier: COVID-19 vs non-COVID (2-D axial slices)",
    modality="ct",
    classes=CT_CLASSES,
    input_description=(
        "PNG slices: stored grey levels; DICOM: HU cropped to the body, lung window "
        f"{LUNG_WINDOW_HU[0]:.0f}..{LUNG_WINDOW_HU[1]:.0f} HU; then squashed to a square and "
        "stretched between the 1st and 99th percentile of its central 80%"
    ),
    intended_use=(
        "Research demonstration inside the CT pipeline: a per-slice COVID-19 score for axial "
        "chest CT slices that contain lung, aggregated over a series by the CT pipeline. "
        "Research use only; not for diagnosis or any clinical decision."
    ),
    limitations=(
        "Trained on UCSD COVID-CT: COVID-19 slices are low-resolution crops of figures in "
        "papers (varied windowing, annotations, compression); non-COVID slices come mostly from "
        "MedPix and other web sources. Source style is confounded with the class, so the score "
        "may track image style rather than disease.",
        "COVID-19 slices are grouped by source paper, not patient; split leakage between "
        "patients of different papers cannot be excluded.",
        "Slices, not patients or series: no volume context. Non-axial and non-lung slices "
        "(abdomen, coronal/sagittal reformats) are outside the training distribution.",
        "Validated only on one small public data set; the 48 real DICOM slices (TCIA, all "
        "COVID-19) are too few and too one-sided to say anything about specificity.",
    ),
    ct=CtInputSpec(window_hu=LUNG_WINDOW_HU, crop_body=True, body_threshold_hu=-500.0),
    extra_evaluations=(
        (
            "Real CT DICOM slices (TCIA COVID-19-NY-SBU, all COVID-19)",
            "P(covid) for the 48 `ct_dicom` slices of 8 patients rendered from HU by the node's "
            "path (body crop, lung window). All are COVID-19 positive, so only sensitivity at "
            "0.5 is shown; coronal, sagittal and low axial slices are outside the training "
            "distribution and some show no lung.",
            evaluate_ct_dicom,
        ),
    ),
    targets=(("test", "macro_roc_auc", 0.90),),
)

CT_AUGMENT = AugmentConfig(rotation_deg=15.0, flip=True, aspect=0.1, shift=0.08, zoom=0.15)
# Without the source-style perturbations (low resolution, noise, rectangles).
CT_AUGMENT_LIGHT = replace(CT_AUGMENT, lowres_prob=0.0, noise=0.01, rectangles=0)
AUGMENT_PRESETS = {"robust": CT_AUGMENT, "light": CT_AUGMENT_LIGHT}


def main(argv: list[str] | None = None) -> int:
    defaults = TrainConfig(
        data_dir=DEFAULT_DATA_DIR, out_dir=DEFAULT_DATA_DIR, augment=CT_AUGMENT, source_balance=0.0
    )
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    common_arguments(parser, defaults, NAME)
    parser.add_argument(
        "--augment",
        choices=sorted(AUGMENT_PRESETS),
        default="robust",
        help="augmentation preset (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    card = run_training(
        CT_TASK,
        config_from_args(
            args,
            defaults,
            NAME,
            command_line("training.train_ct", argv),
            augment=AUGMENT_PRESETS[args.augment],
        ),
    )
    print_summary(card)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

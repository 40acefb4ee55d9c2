"""Train the legacy compact-CNN chest X-ray classifier (COVID-19 / normal / bacterial pneumonia).

    python -m training.legacy.train_xray_compact --out models/xray_classifier/1.0.0  # 1.0.0
    python -m training.legacy.train_xray_compact --preset seed  # the original demo
    python -m training.legacy.train_xray_compact --backbone densenet121 --weights PATH \
        --freeze-backbone

Kept runnable for the reasons in ``training/legacy/__init__.py``; its hyper-parameters are the
defaults of ``TrainConfig`` and the options below (recorded in the card's ``training``).
See ``training/README.md`` for the choices behind the defaults.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from dicom_node.domain import XRAY_CLASSES
from training.data import DEFAULT_DATA_DIR
from training.legacy.augment import AugmentConfig, seed_preset_config
from training.legacy.trainer import (
    TaskSpec,
    TrainConfig,
    common_arguments,
    config_from_args,
    print_summary,
    run_training,
)
from training.provenance import command_line

__all__ = ["NAME", "XRAY_TASK", "main"]

NAME = "xray_classifier"

XRAY_TASK = TaskSpec(
    name=NAME,
    title="Chest X-ray classifier: COVID-19 / normal / bacterial pneumonia",
    modality="xray",
    classes=XRAY_CLASSES,
    out_of_set_classes=("pneumonia_vir",),
    # Triage: a missed COVID-19 costs more than a false alarm. The COVID-19 weight of the label
    # rule is the smallest that reaches this sensitivity on the validation split.
    operating_point=("covid", 0.95),
    input_description=(
        "display image (DICOM: Modality LUT, VOI LUT/window, MONOCHROME1 inverted) squashed "
        "to a square, then stretched between the 1st and 99th percentile of its central 80%"
    ),
    intended_use=(
        "A research triage demonstration on a DICOM network: frontal (PA/AP) chest radiographs "
        "of adults are labelled COVID-19, normal or bacterial pneumonia, with a Grad-CAM map of "
        "the evidence. Research use only; not a medical device; not for diagnosis, triage of "
        "real patients or any clinical decision."
    ),
    limitations=(
        "Source and age are confounded with the class in the training data: every COVID-19 "
        "image is an adult figure from publications (ieee), most bacterial pneumonia images are "
        "pediatric Kaggle films, and normals are NIH adults plus pediatric Kaggle films. The "
        "model can score well here by recognising source, age, markers or image style instead "
        "of disease; augmentation and source weighting reduce but do not remove this.",
        "Adult bacterial pneumonia is represented by only 26 ieee images (25 in training): "
        "expect adult bacterial (and other non-COVID) pneumonia to be called COVID-19 often.",
        "Viral pneumonia other than COVID-19 is not a class: such images get one of the three "
        "labels (see 'Classes outside the model').",
        "Results come from one small, mixed, web-collected data set with label noise and "
        "patient-grouped but not hospital-held-out splits; they do not generalise to other "
        "hospitals, devices or populations. No prospective or external validation was done.",
        "Lateral views, pediatric use, CT, and images with strong post-processing are outside the "
        "intended use.",
    ),
)


def main(argv: list[str] | None = None) -> int:
    defaults = TrainConfig(
        data_dir=DEFAULT_DATA_DIR, out_dir=DEFAULT_DATA_DIR, augment=AugmentConfig()
    )
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    common_arguments(parser, defaults, NAME)
    parser.add_argument(
        "--preset",
        choices=["seed"],
        default=None,
        help="seed: the original demo (InceptionV3 256 px, AvgPool 4x4, Flatten, "
        "Dense 64, Dropout 0.5; Adam 1e-5, 50 epochs, batch 8, rotation 15)",
    )
    args = parser.parse_args(argv)
    cfg = config_from_args(
        args, defaults, NAME, command_line("training.legacy.train_xray_compact", argv)
    )
    if args.preset == "seed":
        cfg = replace(
            cfg,
            backbone="inceptionv3",
            head="seed",
            input_size=256,
            optimizer="adam",
            schedule="constant",
            learning_rate=1e-5,
            epochs=50,
            batch_size=8,
            patience=None,
            source_balance=0.0,
            augment=seed_preset_config(),
        )
    card = run_training(XRAY_TASK, cfg)
    print_summary(card)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

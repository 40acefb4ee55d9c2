"""The shipped severity head through the node's X-ray pipeline, on held-out images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import roc_auc_score

from dicom_node.domain import XrayImageFinding
from dicom_node.pipelines.model_store import CARD_FILE, artefact_directory, read_severity_card
from dicom_node.pipelines.xray.pipeline import XrayPipeline
from dicom_node.pipelines.xray.preprocessing import read_image
from dicom_node.pipelines.xray.severity import MODEL_NAME
from training.data import read_manifest

PER_GROUP = 24  # images per group: enough for a clear ordering, a few seconds of inference


@pytest.fixture(scope="module")
def pipeline() -> XrayPipeline:
    return XrayPipeline.load()


def _extents(pipeline: XrayPipeline, root: Path, paths: list[str]) -> list[float]:
    outcomes = pipeline.analyse_images([read_image(root / p) for p in paths])
    found = [o for o in outcomes if isinstance(o, XrayImageFinding)]
    assert len(found) >= 0.8 * len(paths)  # most are analysable
    extents = []
    for finding in found:
        assert finding.severity is not None
        extents.append(finding.severity.geographic_extent)
    return extents


def test_test_split_normals_score_lower_than_covid(
    pipeline: XrayPipeline, shared_data: Path
) -> None:
    """Held-out patients (test split): adult normals and COVID-19 images the head never saw."""
    with (shared_data / "annotations/covid_severity.csv").open() as handle:
        rated = {row["path"] for row in csv.DictReader(handle)}
    test = [r for r in read_manifest(shared_data) if r.split == "test" and r.modality == "xray"]
    normals = [r.path for r in test if r.label == "normal" and r.source == "nih"][:PER_GROUP]
    covid = [r.path for r in test if r.label == "covid" and r.path not in rated]
    covid = covid[: PER_GROUP // 2] + [r for r in covid if "mhh" in r][: PER_GROUP // 2]
    normal_extent = _extents(pipeline, shared_data, normals)
    covid_extent = _extents(pipeline, shared_data, covid)
    assert np.median(normal_extent) < 1.0  # near 0
    assert np.median(normal_extent) < np.median(covid_extent) - 1.0
    labels = [0] * len(normal_extent) + [1] * len(covid_extent)
    assert roc_auc_score(labels, normal_extent + covid_extent) > 0.75


def test_node_scores_agree_with_the_cards_predictions(
    pipeline: XrayPipeline, shared_data: Path
) -> None:
    """The node's scores are the training run's (same preprocessing, features and head) and
    follow the radiologists' ratings (in sample: the head was fitted on all rated images)."""
    directory = artefact_directory(MODEL_NAME)
    card = read_severity_card(directory / CARD_FILE)
    assert card.research_use_only and card.metrics is not None
    with (directory / "predictions.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["rated_extent"] and r["split"] == "test"]
    assert len(rows) >= 10
    outcomes = pipeline.analyse_images([read_image(shared_data / r["path"]) for r in rows])
    node = np.array(
        [
            o.severity.geographic_extent
            for o in outcomes
            if isinstance(o, XrayImageFinding) and o.severity is not None
        ]
    )
    assert len(node) == len(rows)
    trained = np.array([float(r["final_extent"]) for r in rows])
    # Training caches each lung crop as 8-bit, the node feeds floats: a few hundredths apart.
    assert np.abs(node - trained).max() < 0.15 and np.abs(node - trained).mean() < 0.05
    rated = np.array([float(r["rated_extent"]) for r in rows])
    assert pearsonr(node, rated)[0] > 0.6

"""Benchmark of the X-ray pipeline on real radiographs (not a test: it prints numbers).

    .venv/bin/python bench/bench_xray.py [--repeats 20] [--pngs 4] [--batch 16]
                                         [--models-dir models] [--json]

Per radiograph, end to end: parse + decode + lung segmentation + lung crop + classification +
Grad-CAM + heatmap in source pixels, hot region on the lungs and lung outline (the pipeline's
``preprocess -> predict -> postprocess``, what the node does for one radiograph), as a median
per image against the 150 ms target, with a per-stage breakdown on pydicom-data's
RG1_UNCR.dcm (adult chest CR, 1841x1955, 15 bit, MONOCHROME1).  The images: RG1_UNCR.dcm and
``--pngs`` validation radiographs of the shared data set (skipped when it is absent).

Also: batch throughput (``--batch`` radiographs as one study), the peak RSS of this process,
which holds both pipelines (X-ray with its lung segmentation, and CT) loaded and warmed up,
against the 1.5 GB target, and a reference measured in the same run: keras MobileNetV3Small
(random weights, 224 px) in a tf.function at batch 1, so figures from different machines can
be compared as ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_MS_PER_RADIOGRAPH = 150.0
TARGET_PEAK_RSS_MB = 1536.0  # 1.5 GB, both pipelines loaded


def _median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _shared_pngs(count: int) -> list[Path]:
    """Validation radiographs of the shared data set (never the test split)."""
    from tests.conftest import shared_data_dir
    from training.data import read_manifest

    root = shared_data_dir()
    if count <= 0 or not (root / "manifest.csv").is_file():
        return []
    records = [r for r in read_manifest(root) if r.modality == "xray" and r.split == "val"]
    step = max(1, len(records) // count)
    return [root / r.path for r in records[::step][:count]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--pngs", type=int, default=4, help="shared-data radiographs to add")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    import numpy as np
    import pydicom
    import tensorflow as tf
    from pydicom.data import get_testdata_file

    from dicom_node.pipelines.xray.pipeline import XrayPipeline
    from dicom_node.pipelines.xray.preprocessing import dataset_to_display, read_image
    from dicom_node.registry import PipelineRegistry

    start = time.perf_counter()
    registry = PipelineRegistry(args.models_dir)
    pipeline = registry.get("xray").pipeline
    assert isinstance(pipeline, XrayPipeline)
    registry.warm_up("xray")
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    registry.warm_up("ct")  # held as the node holds it: the RSS figure is for both
    ct_load_s = time.perf_counter() - start

    raw = Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()

    def rg1_end_to_end() -> Any:
        return pipeline.run([pydicom.dcmread(io.BytesIO(raw))])

    pngs = _shared_pngs(args.pngs)

    def png_end_to_end(path: Path) -> Callable[[], Any]:
        return lambda: pipeline.analyse_images([read_image(path)])

    per_image = {"RG1_UNCR.dcm": _median_ms(rg1_end_to_end, args.repeats)}
    for path in pngs:
        per_image[path.name] = _median_ms(png_end_to_end(path), args.repeats)
    median_ms = statistics.median(per_image.values())

    ds = pydicom.dcmread(io.BytesIO(raw))
    display = dataset_to_display(ds)
    prepared = pipeline.preprocess([ds])
    raw_out = pipeline.predict(prepared)
    segmenter = pipeline.segmenter
    stages = {
        "parse_and_decode": _median_ms(
            lambda: dataset_to_display(pydicom.dcmread(io.BytesIO(raw))), args.repeats
        ),
        "lung_segmentation": (
            _median_ms(lambda: segmenter.segment([display]), args.repeats) if segmenter else 0.0
        ),
        "preprocess_total": _median_ms(lambda: pipeline.preprocess([ds]), args.repeats),
        "model_and_gradcam": _median_ms(lambda: pipeline.predict(prepared), args.repeats),
        "postprocess": _median_ms(lambda: pipeline.postprocess(raw_out, prepared), args.repeats),
    }

    batch_sources = [pydicom.dcmread(io.BytesIO(raw)) for _ in range(args.batch)]
    batch_ms = _median_ms(lambda: pipeline.run(batch_sources), max(3, args.repeats // 4), 1)
    inputs = np.repeat(prepared.images[0].model_input[np.newaxis], args.batch, axis=0)
    model_batch_ms = _median_ms(lambda: pipeline.cam(inputs), args.repeats)
    # Before the reference model exists: that one is ours to measure, not the node's.
    peak_rss_mb = _peak_rss_mb()

    reference = tf.keras.applications.MobileNetV3Small(
        input_shape=(224, 224, 3), weights=None, classes=3
    )
    ref_fn = tf.function(reference, input_signature=[tf.TensorSpec((None, 224, 224, 3))])
    ref_input = np.zeros((1, 224, 224, 3), np.float32)
    reference_ms = _median_ms(lambda: ref_fn(ref_input), args.repeats)

    segmentation = "none (whole-image model)"
    if pipeline.lung_crop is not None:
        segmentation = pipeline.lung_crop.segmentation_model
    result = {
        "image": f"RG1_UNCR.dcm {ds.Columns}x{ds.Rows}, {ds.BitsStored} bit, "
        f"{ds.PhotometricInterpretation}; plus {len(pngs)} shared-data PNGs",
        "model": f"{pipeline.model_info.name} {pipeline.model_info.version}, "
        f"input {pipeline.input_size}px, Grad-CAM layer {pipeline.cam.layer_name}, "
        f"lung segmentation {segmentation}, OOD check {'on' if pipeline.ood else 'off'}",
        "xray_load_and_warm_up_s": round(load_s, 2),
        "ct_load_and_warm_up_s": round(ct_load_s, 2),
        "per_radiograph_median_ms": round(median_ms, 1),
        "per_radiograph_target_ms": TARGET_MS_PER_RADIOGRAPH,
        "per_radiograph_vs_target": round(median_ms / TARGET_MS_PER_RADIOGRAPH, 2),
        "per_image_median_ms": {k: round(v, 1) for k, v in per_image.items()},
        "rg1_stages_median_ms": {k: round(v, 1) for k, v in stages.items()},
        "batch": args.batch,
        "batch_end_to_end_images_per_s": round(args.batch / (batch_ms / 1000.0), 1),
        "batch_model_and_gradcam_images_per_s": round(args.batch / (model_batch_ms / 1000.0), 1),
        "peak_rss_mb_both_pipelines": round(peak_rss_mb),
        "peak_rss_target_mb": TARGET_PEAK_RSS_MB,
        "peak_rss_vs_target": round(peak_rss_mb / TARGET_PEAK_RSS_MB, 2),
        "reference_mobilenetv3small_batch1_ms": round(reference_ms, 1),
        "per_radiograph_vs_reference": round(median_ms / reference_ms, 1),
        "threads": {
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        },
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:40s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark of the X-ray pipeline on one real radiograph (not a test: it prints numbers).

    .venv/bin/python bench/bench_xray.py [--repeats 20] [--batch 16] [--models-dir models]

Measures, on pydicom-data's RG1_UNCR.dcm (adult chest CR, 1955x1841, 15 bit, MONOCHROME1):

- single image, end to end: parse + decode + preprocessing + inference + Grad-CAM + heatmap
  resampling to 1955x1841 and hot-region outline (the node's work for one radiograph), as a
  median with a per-stage breakdown;
- batch throughput: ``--batch`` radiographs in one study through the same pipeline, and the
  model + Grad-CAM alone on ready inputs;
- peak RSS of the process;
- a reference measured in the same run: keras MobileNetV3Small (random weights, 224 px) in a
  tf.function at batch 1, so figures from different machines can be compared as ratios.
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


def _median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    import numpy as np
    import pydicom
    import tensorflow as tf
    from pydicom.data import get_testdata_file

    from dicom_node.pipelines.xray import XrayPipeline

    start = time.perf_counter()
    pipeline = XrayPipeline.load(args.models_dir)
    load_s = time.perf_counter() - start
    raw = Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()

    def read() -> pydicom.Dataset:
        ds = pydicom.dcmread(io.BytesIO(raw))
        _ = ds.pixel_array  # decode now so the stages below time only their own work
        return ds

    def end_to_end() -> Any:
        return pipeline.run([pydicom.dcmread(io.BytesIO(raw))])

    ds = read()
    prepared = pipeline.preprocess([ds])
    raw_out = pipeline.predict(prepared)
    stages = {
        "parse_and_decode": _median_ms(read, args.repeats),
        "preprocess": _median_ms(lambda: pipeline.preprocess([ds]), args.repeats),
        "model_and_gradcam": _median_ms(lambda: pipeline.predict(prepared), args.repeats),
        "postprocess": _median_ms(lambda: pipeline.postprocess(raw_out, prepared), args.repeats),
    }
    single_ms = _median_ms(end_to_end, args.repeats)

    batch_sources = [read() for _ in range(args.batch)]
    batch_ms = _median_ms(lambda: pipeline.run(batch_sources), max(3, args.repeats // 4), 1)
    inputs = np.repeat(prepared.images[0].model_input[np.newaxis], args.batch, axis=0)
    model_batch_ms = _median_ms(lambda: pipeline.cam(inputs), args.repeats)

    reference = tf.keras.applications.MobileNetV3Small(
        input_shape=(224, 224, 3), weights=None, classes=3
    )
    ref_fn = tf.function(reference, input_signature=[tf.TensorSpec((None, 224, 224, 3))])
    ref_input = np.zeros((1, 224, 224, 3), np.float32)
    reference_ms = _median_ms(lambda: ref_fn(ref_input), args.repeats)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    result = {
        "image": f"RG1_UNCR.dcm {ds.Columns}x{ds.Rows}, {ds.BitsStored} bit, "
        f"{ds.PhotometricInterpretation}",
        "model": f"{pipeline.model_info.name} {pipeline.model_info.version}, "
        f"input {pipeline.input_size}px, Grad-CAM layer {pipeline.cam.layer_name}",
        "model_load_s": round(load_s, 2),
        "single_image_median_ms": round(single_ms, 1),
        "stages_median_ms": {k: round(v, 1) for k, v in stages.items()},
        "batch": args.batch,
        "batch_end_to_end_images_per_s": round(args.batch / (batch_ms / 1000.0), 1),
        "batch_model_and_gradcam_images_per_s": round(args.batch / (model_batch_ms / 1000.0), 1),
        "reference_mobilenetv3small_batch1_ms": round(reference_ms, 1),
        "single_image_vs_reference": round(single_ms / reference_ms, 1),
        "peak_rss_mb": round(peak_rss_mb),
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

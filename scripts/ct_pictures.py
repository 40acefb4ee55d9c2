"""Pictures of the CT pipeline on a real series, for README and ``docs/``.

Runs the node's CT pipeline and output builders on a series directory and writes the
coronal overview and the key images (the Secondary Captures the node sends back) as PNG::

    .venv/bin/python scripts/ct_pictures.py ../shared/data/ct_volumes/<series> docs/ct-<name>
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pydicom
from PIL import Image

from dicom_node.domain import OutputContext
from dicom_node.outputs.ct import build_ct_outputs
from dicom_node.pipelines.ct.pipeline import CtPipeline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("series", type=Path, help="directory of one CT series")
    parser.add_argument("prefix", help="output path prefix, e.g. docs/ct-a0001")
    args = parser.parse_args(argv)
    datasets = [pydicom.dcmread(p) for p in sorted(args.series.glob("*.dcm"))]
    pipeline = CtPipeline.load()
    finding = pipeline.run(datasets)
    outputs = build_ct_outputs(finding, datasets, OutputContext(), pipeline.model_info)
    pictures = [ds for ds in outputs if ds.Modality == "OT"]
    *keys, overview = pictures
    Path(args.prefix).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overview.pixel_array).save(f"{args.prefix}-coronal.png", optimize=True)
    for number, key in enumerate(keys, start=1):
        Image.fromarray(key.pixel_array).save(f"{args.prefix}-key{number}.png", optimize=True)
    print(json.dumps(pipeline.summarise(finding)))


if __name__ == "__main__":
    main()

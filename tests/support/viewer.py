"""OHIF and a headless browser for tests and the demo: the viewer a person would use.

``install_viewer`` fetches OHIF's prebuilt app and playwright-core from the npm registry into
a cache folder (``scripts/ohif/install.sh``; ``$DICOM_NODE_VIEWER_CACHE``, default
``~/.cache/dicom-node/viewer``); ``OhifServer`` serves it on loopback with a DICOMweb proxy to
one Orthanc (``scripts/ohif/serve.py``); ``run_click_driver`` runs
``tests/browser/click_to_result.js`` in Debian's chromium and returns what it saw.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.support.net import free_port, wait_for_http

REPO_ROOT = Path(__file__).resolve().parents[2]
OHIF_SCRIPTS = REPO_ROOT / "scripts" / "ohif"
CLICK_DRIVER = REPO_ROOT / "tests" / "browser" / "click_to_result.js"
CHROMIUM = Path("/usr/bin/chromium")
OHIF_VERSION = "3.13.2"  # as in scripts/ohif/install.sh


def missing_tools() -> list[str]:
    """What the browser test cannot run without (installed by scripts/install-system-deps.sh)."""
    missing = [name for name in ("node", "npm") if shutil.which(name) is None]
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(str(CHROMIUM))
    return missing


@dataclass(frozen=True)
class ViewerTools:
    cache: Path

    @property
    def dist(self) -> Path:
        return self.cache / f"ohif-{OHIF_VERSION}" / "package" / "dist"

    @property
    def node_modules(self) -> Path:
        return self.cache / "node_modules"


def install_viewer(cache: Path | None = None, timeout: float = 900) -> ViewerTools:
    """Fetch OHIF and playwright-core once (about 50 MB); later calls return at once."""
    args = [str(OHIF_SCRIPTS / "install.sh"), *([str(cache)] if cache else [])]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"installing the viewer failed: {done.stderr[-2000:]}")
    return ViewerTools(Path(done.stdout.strip().splitlines()[-1]))


class OhifServer:
    """OHIF's ``dist/`` on 127.0.0.1 with ``/dicom-web`` and ``/wado`` proxied to Orthanc."""

    def __init__(
        self, tools: ViewerTools, orthanc_url: str, workdir: Path, port: int | None = None
    ) -> None:
        self.tools = tools
        self.orthanc_url = orthanc_url
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "app-config.js"
        config.write_text(
            subprocess.run(
                [
                    sys.executable,
                    str(OHIF_SCRIPTS / "app_config.py"),
                    str(self.tools.dist / "app-config.js"),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
        )
        log = (self.workdir / "ohif-server.log").open("ab")
        self._process = subprocess.Popen(
            [
                sys.executable,
                str(OHIF_SCRIPTS / "serve.py"),
                str(self.tools.dist),
                self.orthanc_url,
                str(self.port),
                str(config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_http(f"{self.url}/app-config.js", timeout)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def viewer_url(self, study_instance_uid: str) -> str:
        return f"{self.url}/viewer?StudyInstanceUIDs={study_instance_uid}"

    def __enter__(self) -> OhifServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_click_driver(tools: ViewerTools, config: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run the browser driver with ``config`` (see the script's header); its JSON result."""
    out_dir = Path(config["outDir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / f"config-{config['kind']}.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "NODE_PATH": str(tools.node_modules)}
    try:
        done = subprocess.run(
            ["node", str(CLICK_DRIVER), str(config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the browser driver ran past {timeout:.0f} s") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise AssertionError(
            f"the browser driver failed ({done.returncode}): {done.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


@dataclass(frozen=True)
class PixelStats:
    """What a screenshot shows, in numbers: contrast, and how much of it is coloured."""

    std: float  # of the grey levels: near 0 for a blank or uniform viewport
    grey_levels: int  # distinct grey levels
    coloured: float  # share of clearly coloured pixels (overlays; a radiograph is grey)
    green: float  # share of green pixels (OHIF draws SR annotations in green)


def pixel_stats(png: Path) -> PixelStats:
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    grey = rgb.mean(axis=-1)
    return PixelStats(
        std=float(grey.std()),
        grey_levels=len(np.unique(grey.astype(np.uint8))),
        coloured=float(np.mean(spread > 60)),
        green=float(np.mean((g > 150) & (g - np.maximum(r, b) > 60))),
    )

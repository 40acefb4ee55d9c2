"""Run ``dicom-node serve`` as a subprocess (tests, demo) and stop it cleanly or brutally."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.net import wait_for_http


def run_cli(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``dicom-node ARGS`` in a separate process, as an admin runs it; never raises on exit."""
    return subprocess.run(
        [sys.executable, "-m", "dicom_node", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class NodeProcess:
    def __init__(
        self, data_dir: Path, env: Mapping[str, str], log_path: Path, cwd: Path | None = None
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.cwd = cwd
        self.env = {**os.environ, **env, "DICOM_NODE_DATA_DIR": str(self.data_dir)}
        self.http_port = int(self.env["DICOM_NODE_HTTP_PORT"])
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0, wait_models: bool = True) -> None:
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
        )
        wait_for_http(f"http://127.0.0.1:{self.http_port}/healthz", timeout, ok=(200, 503))
        if wait_models:
            self.wait_models(timeout)

    def wait_models(self, timeout: float = 120.0) -> None:
        """Until the node's models are loaded (several nodes can load theirs at once)."""
        deadline = time.monotonic() + timeout
        while not self._models_ready():
            assert self._process is not None
            if time.monotonic() > deadline or self._process.poll() is not None:
                raise RuntimeError(f"node did not become ready; see {self.log_path}")
            time.sleep(0.2)

    def _models_ready(self) -> bool:
        # While TensorFlow loads the models, an answer can take longer than health()'s
        # timeout on a busy machine: that is "not ready yet", not a failure.
        try:
            return bool(self.health().get("models_ready"))
        except (TimeoutError, urllib.error.URLError, ConnectionError):
            return False

    def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                result: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            result = json.loads(exc.read())
        return result

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def stop(self, timeout: float = 30.0) -> int | None:
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        code = self._process.returncode
        self._process = None
        return code

    def kill9(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait()
        self._process = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

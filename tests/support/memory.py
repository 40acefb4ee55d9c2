"""Peak memory of a piece of code, measured in a fresh interpreter (Linux ``/proc``).

``peak_rise`` runs ``setup`` then ``work`` in a subprocess of this checkout: after ``setup``
(imports, files) the peak RSS is reset (``/proc/self/clear_refs``), and the result is how far
``VmHWM`` rose above the RSS at that moment, with what ``work`` left in ``result`` (repr).  The
subprocess's address space is capped (``limit_mb``), so a regression fails with MemoryError
instead of taking the machine's memory.  ``vm_hwm_mb`` reads another process's peak.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

_TEMPLATE = """
import json

def _status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024.0
    return 0.0

result = None
{setup}
with open("/proc/self/clear_refs", "w") as _handle:
    _handle.write("5")
_before = _status("VmRSS")
{work}
print("PEAK " + json.dumps({{"rise_mb": _status("VmHWM") - _before, "result": repr(result)}}))
"""


def peak_rise(setup: str, work: str, limit_mb: int = 3072, timeout: float = 120) -> dict[str, Any]:
    """{"rise_mb": float, "result": str} of ``work`` run after ``setup`` in a fresh interpreter."""
    script = _TEMPLATE.format(setup=textwrap.dedent(setup), work=textwrap.dedent(work))

    def cap() -> None:
        limit = limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=cap,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("PEAK ")]
    if done.returncode != 0 or not lines:
        raise AssertionError(
            f"the measured code failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    report: dict[str, Any] = json.loads(lines[-1][5:])
    return report


def vm_hwm_mb(pid: int) -> float:
    """A process's peak resident set size so far, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError(f"no VmHWM for process {pid}")

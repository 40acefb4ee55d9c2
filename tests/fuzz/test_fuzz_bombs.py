"""Decode and inflate bombs against a running node (issue 26), seeded and bounded.

One node (intake only, ``max_instance_mb=16``, STOW-RS on) receives seeded variants of each
bomb by C-STORE, and some by STOW-RS:

* JPEG frame headers (SOF0/1/2/3) of random sizes, components and precisions;
* JPEG 2000 SIZ markers of random sizes and tile sizes;
* RLE frames with a wrong segment count, offsets out of range, or a segment of replicate runs
  decoding to up to 1 GiB;
* deflated data sets whose Pixel Data inflates to 17 MiB - 1 GiB (about 1000:1);

with honest JPEG, JPEG 2000, RLE and deflated images among them.  Every bomb gets a failure
status (C-STORE) or a FailedSOPSequence entry (STOW-RS) and a ``rejected`` row with a reason,
every honest image is stored, the node answers a C-ECHO after each association, and its peak
resident memory (``VmHWM``) rises by less than 1 GiB over the run (pydicom's decoders and its
whole-stream inflate took 4-15 GB for one bomb).

``DICOM_NODE_FUZZ_SEED`` picks the run (printed); every failure names ``seed=... case=...``.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from pydicom import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from tests.support import bombs
from tests.support.dicom_client import StoreSession, echo
from tests.support.factories import small_cr
from tests.support.memory import vm_hwm_mb
from tests.support.mutations import Item
from tests.support.net import free_port
from tests.support.nodecheck import JobLogReader, SandboxNode

DEFAULT_SEED = 20260126
CASES = 150
MAX_INSTANCE_MB = 16
MEMORY_RISE_LIMIT_MB = 1024
FAILURE_STATUSES = {0xA700, 0xA900, 0xC000}


@dataclass(frozen=True)
class Case:
    index: int
    kind: str
    detail: str
    dataset: Dataset  # the header (UIDs, transfer syntax)
    payload: bytes | None = None  # wire bytes when not the encoded data set
    syntax: str = ""
    honest: bool = False

    def item(self) -> Item:
        return bombs.wire_item(self.dataset, self.payload, self.syntax)

    def part10(self) -> bytes:
        syntax = self.syntax or str(self.dataset.file_meta.TransferSyntaxUID)
        return bombs.part10(
            self.payload if self.payload is not None else self.dataset, self.dataset, syntax
        )


def _jpeg(rng: random.Random, index: int) -> Case:
    rows, columns = rng.choice([(rng.randint(1, 65535), rng.randint(1, 65535)), (96, 128)])
    marker = rng.choice([0xC0, 0xC1, 0xC2, 0xC3])
    patch = {"marker": marker}
    if (rows, columns) == (bombs.ROWS, bombs.COLUMNS) or rng.random() < 0.2:
        patch["components"] = rng.choice([3, 4, 255])
    detail = f"SOF{marker - 0xC0} {rows}x{columns} {patch}"
    return Case(index, "jpeg", detail, bombs.jpeg_bomb(rows, columns, **patch))


def _j2k(rng: random.Random, index: int) -> Case:
    rows, columns = rng.randint(129, 2**31), rng.randint(97, 2**31)
    tile = (rng.randint(1, 512), rng.randint(1, 512)) if rng.random() < 0.5 else None
    detail = f"SIZ {rows}x{columns} tiles {tile}"
    return Case(index, "j2k", detail, bombs.j2k_bomb(rows, columns, tile))


def _rle(rng: random.Random, index: int) -> Case:
    kind = rng.choice(["segments", "offsets", "order", "overlong"])
    overlong_mb = rng.randint(1, 1024)  # 16 KiB - 16 MiB of replicate runs
    if kind == "overlong" and overlong_mb >= MAX_INSTANCE_MB * 64:
        overlong_mb = MAX_INSTANCE_MB * 64 - 1
    detail = f"{kind} {overlong_mb} MiB" if kind == "overlong" else kind
    return Case(index, "rle", detail, bombs.rle_tampered(kind, overlong_mb))


def _deflate(rng: random.Random, index: int) -> Case:
    inflated_mb = rng.choice([rng.randint(MAX_INSTANCE_MB + 1, 256), rng.randint(256, 1024)])
    header, wire = bombs.deflate_bomb(inflated_mb)
    return Case(
        index,
        "deflate",
        f"{inflated_mb} MiB inflated",
        header,
        wire,
        DeflatedExplicitVRLittleEndian,
    )


def _honest(rng: random.Random, index: int) -> Case:
    kind = rng.choice(["jpeg", "j2k", "rle", "deflate"])
    if kind != "deflate":
        return Case(index, f"honest {kind}", "", bombs.honest(kind), honest=True)
    ds = small_cr()
    wire = bombs.deflate(bombs.encode(ds))
    return Case(index, "honest deflate", "", ds, wire, DeflatedExplicitVRLittleEndian, True)


MAKERS: tuple[Callable[[random.Random, int], Case], ...] = (_jpeg, _j2k, _rle, _deflate, _honest)


def make_cases(seed: int, count: int) -> list[Case]:
    rng = random.Random(f"dicom-node-bombs/{seed}")
    return [MAKERS[index % len(MAKERS)](rng, index) for index in range(count)]


def _stow(url: str, case: Case) -> tuple[int, list[int]]:
    """HTTP status and the FailureReason of each failed part."""
    body = b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + case.part10() + b"\r\n--XyZ--\r\n"
    response = requests.post(
        f"{url}/studies",
        data=body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=XyZ'},
        timeout=60,
    )
    if response.status_code not in (200, 202, 409):
        return response.status_code, []
    answer = Dataset.from_json(response.json())
    return response.status_code, [int(i.FailureReason) for i in answer.get("FailedSOPSequence", [])]


@pytest.mark.slow
def test_bombs_are_refused_and_the_node_stays_small(tmp_path: Path) -> None:
    seed = int(os.environ.get("DICOM_NODE_FUZZ_SEED", DEFAULT_SEED))
    print(f"\nbomb fuzz seed {seed} (DICOM_NODE_FUZZ_SEED), {CASES} cases")
    cases = make_cases(seed, CASES)
    stow_port = free_port()
    node = SandboxNode(
        tmp_path / "sandbox",
        tmp_path / "node.log",
        worker_threads=0,
        max_instance_mb=MAX_INSTANCE_MB,
        dicomweb_port=stow_port,
    )
    problems: list[str] = []
    started = time.monotonic()
    try:
        node.start(wait_models=False)
        baseline = vm_hwm_mb(node.pid)
        url = f"http://127.0.0.1:{stow_port}/dicom-web"
        for offset in range(0, len(cases), 8):
            batch = cases[offset : offset + 8]
            with StoreSession("127.0.0.1", node.port) as session:
                assert session.established, node.log_text()[-2000:]
                for case in batch:
                    outcome = session.store(case.item())
                    name = f"seed={seed} case={case.index} {case.kind} ({case.detail})"
                    if case.honest and outcome.status != 0x0000:
                        problems.append(f"{name}: honest image answered {outcome.category}")
                    elif not case.honest and outcome.status not in FAILURE_STATUSES:
                        problems.append(f"{name}: C-STORE answered {outcome.category}")
            if echo("127.0.0.1", node.port) is None:
                problems.append(f"seed={seed}: no C-ECHO answer after cases {offset}-{offset + 7}")
            case = batch[0]  # again by STOW-RS (a refused instance was not filed)
            if not case.honest:
                status, reasons = _stow(url, case)
                if status != 409 or not set(reasons) <= FAILURE_STATUSES or not reasons:
                    problems.append(
                        f"seed={seed} case={case.index} {case.kind} ({case.detail}): "
                        f"STOW-RS answered {status} {reasons}"
                    )
        rise = vm_hwm_mb(node.pid) - baseline
        assert node.running, node.log_text()[-3000:]
    finally:
        node.stop()
    elapsed = time.monotonic() - started
    rejected = JobLogReader(node.data_dir / "jobs.sqlite").rejections()
    bombs_sent = sum(not case.honest for case in cases)
    stow_sent = sum(not cases[i].honest for i in range(0, len(cases), 8))
    print(f"{bombs_sent} bombs, {len(rejected)} rejected, memory +{rise:.0f} MiB, {elapsed:.0f} s")
    if len(rejected) != bombs_sent + stow_sent:
        problems.append(f"{len(rejected)} rejected rows for {bombs_sent + stow_sent} bombs sent")
    problems += [f"rejected without a reason: {row}" for row in rejected if not row.reason]
    if rise >= MEMORY_RISE_LIMIT_MB:
        problems.append(f"the node's peak memory rose by {rise:.0f} MiB")
    assert not problems, "\n".join(problems)

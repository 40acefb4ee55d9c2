"""Fuzzing the STOW-RS framing of a running node with seeded, mutated raw HTTP requests.

One node (intake only, STOW-RS on, ``network_timeout_seconds=1``, at most 40 parts per
request) receives a few hundred requests made from valid STOW-RS requests by seeded
mutations: the request line, headers (Content-Type and boundary, Content-Length,
Transfer-Encoding, Expect), chunk sizes and separators, trailers, delimiters, truncated
bodies (the client half-closes, hangs up or goes silent), many parts, garbage parts and
flipped bytes.  After every request:

* the answer is a well-formed HTTP status line, or the connection was closed without one;
* no ``.tmp-stow-*`` file is left once the node has finished the request;
* ``/healthz`` answers and a valid STOW-RS request still stores (200).

At the end: the node runs, its log has no traceback, no thread death and no overlong line,
and every inbox / quarantine file has its job-log row (``nodecheck.orphan_problems``).

Seed and size: ``DICOM_NODE_FUZZ_SEED`` (default below, printed), ``DICOM_NODE_STOW_FUZZ_CASES``
(default 800; about 30 s on 2 cores).  Every problem names
``seed=... case=... mutation=...``; the status histogram per mutation is printed (``-s``).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from tests.support.factories import small_cr
from tests.support.net import free_port
from tests.support.nodecheck import (
    JobLogReader,
    SandboxNode,
    leftover_files,
    log_line_problems,
    orphan_problems,
)

DEFAULT_SEED = 20260226
MAX_PARTS = 40
NETWORK_TIMEOUT_SECONDS = 1.0
SILENT_SHARE = 0.1  # truncated requests whose client then waits silently (costs the timeout)
LEFTOVER_WAIT_SECONDS = 15.0
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) [^\r\n]*\r\n")
_INTERIM = re.compile(rb"HTTP/1\.1 100 [^\r\n]*\r\n\r\n")


@dataclass
class Request:
    """One raw request: what to send, and how the client ends its side."""

    data: bytes
    ending: str = "half-close"  # "half-close" | "hang-up" (no read) | "silent" (read, no EOF)


@dataclass
class Templates:
    parts: list[bytes]  # valid Part 10 instances of one study

    def multipart(self, parts: list[bytes], boundary: bytes = b"XyZ") -> bytes:
        out = b""
        for part in parts:
            out += b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + part
            out += b"\r\n"
        return out + b"--" + boundary + b"--\r\n"


CONTENT_TYPE = 'multipart/related; type="application/dicom"; boundary=XyZ'


def head(
    *fields: str, method: str = "POST", path: str = "/dicom-web/studies", version: str = "1.1"
) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: node", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def sized(body: bytes, *fields: str, content_type: str = CONTENT_TYPE) -> bytes:
    return head(f"Content-Type: {content_type}", f"Content-Length: {len(body)}", *fields) + body


def chunk_lines(body: bytes, rng: random.Random) -> list[tuple[bytes, bytes]]:
    """(size line, data) per chunk of random sizes."""
    chunks, position = [], 0
    while position < len(body):
        size = rng.choice([1, 7, 100, 4096, 65536, len(body)])
        data = body[position : position + size]
        chunks.append((b"%x\r\n" % len(data), data))
        position += len(data)
    return chunks


def chunked(chunks: list[tuple[bytes, bytes]], end: bytes = b"0\r\n\r\n") -> bytes:
    return b"".join(line + data + b"\r\n" for line, data in chunks) + end


def chunked_head(*fields: str) -> bytes:
    return head(f"Content-Type: {CONTENT_TYPE}", "Transfer-Encoding: chunked", *fields)


# -- mutations: each builds one request from the templates -------------------------------------

Mutation = Callable[[random.Random, Templates], Request]


def valid_sized(rng: random.Random, t: Templates) -> Request:
    return Request(sized(t.multipart(rng.sample(t.parts, rng.randint(1, 3)))))


def valid_chunked(rng: random.Random, t: Templates) -> Request:
    body = t.multipart(rng.sample(t.parts, rng.randint(1, 3)))
    extension = rng.choice([b"", b";x=1", b'; name="v"'])
    chunks = [(line[:-2] + extension + b"\r\n", data) for line, data in chunk_lines(body, rng)]
    trailer = rng.choice([b"", b"X-Checksum: 1\r\n"])
    return Request(chunked_head() + chunked(chunks, b"0\r\n" + trailer + b"\r\n"))


def content_length(rng: random.Random, t: Templates) -> Request:
    body = t.multipart(t.parts[:1])
    n = len(body)
    value = rng.choice(
        [
            "abc",
            "-1",
            f"+{n}",
            f"{n} {n}",
            f"{n}, {n}",
            "0x10",
            "",
            " ",
            f"{n - 1}",
            f"{n + 1}",
            "9" * 30,
            f"{n}.0",
            f"0{n}",
            "\u0661\u0662",
        ]
    )
    return Request(head(f"Content-Type: {CONTENT_TYPE}", f"Content-Length: {value}") + body)


def duplicate_length(rng: random.Random, t: Templates) -> Request:
    body = t.multipart(t.parts[:1])
    second = rng.choice([len(body), len(body) + 3, 0])
    fields = (f"Content-Length: {len(body)}", f"Content-Length: {second}")
    return Request(head(f"Content-Type: {CONTENT_TYPE}", *fields) + body)


def length_and_chunked(rng: random.Random, t: Templates) -> Request:
    body = t.multipart(t.parts[:1])
    framed = chunked(chunk_lines(body, rng))
    length = rng.choice([len(body), len(framed)])
    return Request(chunked_head(f"Content-Length: {length}") + framed)


def transfer_coding(rng: random.Random, t: Templates) -> Request:
    body = t.multipart(t.parts[:1])
    value = rng.choice(
        [
            "gzip, chunked",
            "chunked, chunked",
            "identity",
            "CHUNKED",
            " chunked ",
            "chunked,",
            "chunked;q=1",
            "gzip",
            "",
            "x" * 300,
            "deflate, chunked",
            "chunked, gzip",
        ]
    )
    fields = [f"Content-Type: {CONTENT_TYPE}", f"Transfer-Encoding: {value}"]
    return Request(head(*fields) + chunked(chunk_lines(body, rng)))


def content_type(rng: random.Random, t: Templates) -> Request:
    body = t.multipart(t.parts[:1])
    value = rng.choice(
        [
            None,
            "application/dicom",
            'multipart/related; type="application/dicom+json"; boundary=XyZ',
            'multipart/related; type="application/dicom"',
            "multipart/related; boundary=XyZ",
            'multipart/related; type="application/dicom"; boundary="XyZ"',
            'multipart/related; type="application/dicom"; boundary=Other',
            'multipart/related; type="application/dicom"; boundary=' + "b" * 300,
            'multipart/related; type="application/dicom"; boundary=\xe9t\xe9',
            'multipart/related; type="application/dicom"; boundary=',
            "multipart/related; type=; boundary=XyZ",
            "multipart/related;;;",
            "\x00\x01",
        ]
    )
    fields = [f"Content-Length: {len(body)}"] + ([f"Content-Type: {value}"] if value else [])
    return Request(head(*fields) + body)


def expect_continue(rng: random.Random, t: Templates) -> Request:
    body = t.multipart(t.parts[:1])
    length = rng.choice([len(body), 10**15])
    fields = [f"Content-Type: {CONTENT_TYPE}", f"Content-Length: {length}", "Expect: 100-continue"]
    return Request(head(*fields) + body)


def request_line(rng: random.Random, t: Templates) -> Request:
    body = t.multipart(t.parts[:1])
    method, path, version = rng.choice(
        [
            ("GET", "/dicom-web/studies", "1.1"),
            ("PUT", "/dicom-web/studies", "1.1"),
            ("HEAD", "/dicom-web/studies", "1.1"),
            ("OPTIONS", "*", "1.1"),
            ("FOO", "/", "1.1"),
            ("POST", "/dicom-web/studies/abc", "1.1"),
            ("POST", "/dicom-web/series", "1.1"),
            ("POST", "/dicom-web/studies/1.2.3", "1.1"),
            ("POST", "/" + "a" * 70000, "1.1"),
            ("POST", "/dicom-web/studies", "1.0"),
            ("POST", "/dicom-web/studies", "2.0"),
            ("POST", "/dicom-web/studies?x=1", "1.1"),
            ("POST", "/dicom-web/studies/../x", "1.1"),
        ]
    )
    fields = (f"Content-Type: {CONTENT_TYPE}", f"Content-Length: {len(body)}")
    return Request(head(*fields, method=method, path=path, version=version) + body)


def header_garbage(rng: random.Random, t: Templates) -> Request:
    body = t.multipart(t.parts[:1])
    extra = rng.choice(
        [
            ["no colon here"],
            ["X-Long: " + "v" * 70000],
            [f"X-{i}: {i}" for i in range(150)],
            [" folded: line"],
            ["Content-Type : x"],
            ["\x7f: \x00"],
        ]
    )
    return Request(sized(body, *extra))


def chunk_size(rng: random.Random, t: Templates) -> Request:
    body = t.multipart(t.parts[:1])
    chunks = chunk_lines(body, rng)
    index = rng.randrange(len(chunks))
    _, data = chunks[index]
    size = len(data)
    bad = rng.choice(
        [
            b"-1",
            b"0x%x" % size,
            b"%x_0" % size,
            b"+%x" % size,
            b" %x" % size,
            b"G",
            b"",
            b"f" * 17,
            b"%x" % (size + 1),
            b"%x" % max(size - 1, 0),
            b"%x;" % size + b"e" * 5000,
            b"%X" % size,
            b"0" * 16 + b"%x" % size,
            b"%x\x00" % size,
        ]
    )
    ending = rng.choice([b"\r\n", b"\n"])
    chunks[index] = (bad + ending, data)
    return Request(chunked_head() + chunked(chunks))


def chunk_separator(rng: random.Random, t: Templates) -> Request:
    body = t.multipart(t.parts[:1])
    chunks = chunk_lines(body, rng)
    index = rng.randrange(len(chunks))
    separator = rng.choice([b"", b"\n", b"\r", b"XX", b" \r\n"])
    framed = b""
    for number, (line, data) in enumerate(chunks):
        framed += line + data + (separator if number == index else b"\r\n")
    end = rng.choice([b"0\r\n\r\n", b"0\r\n", b"0\r\nX-T: 1\r\n", b"0\r\n" + b"X: 1\r\n" * 70])
    return Request(chunked_head() + framed + end)


def delimiters(rng: random.Random, t: Templates) -> Request:
    part = t.parts[0]
    body = rng.choice(
        [
            part,
            b"--XyZ--\r\n",
            b"--XyZ\r\n\r\n" + part,
            b"preamble\r\n" + t.multipart([part]),
            t.multipart([part]) + b"epilogue",
            b"--XyZabc\r\n\r\n" + part + b"\r\n--XyZ--",
            b"--XyZ\r\nno end of headers\r\n--XyZ--\r\n",
            b"--XyZ\r\n\r\n\r\n--XyZ--\r\n",
            b"--XyZ  \r\n\r\n" + part + b"\r\n--XyZ--\r\n",
            b"--XyZ\r\n\r\n" + part + b"\r\n--XyZ",
            b"--XyZ" * 1000,
        ]
    )
    return Request(sized(body))


def truncated(rng: random.Random, t: Templates) -> Request:
    whole = rng.choice([valid_sized, valid_chunked])(rng, t).data
    cut = rng.randrange(1, len(whole))
    ending = "silent" if rng.random() < SILENT_SHARE else rng.choice(["half-close", "hang-up"])
    return Request(whole[:cut], ending)


def many_parts(rng: random.Random, t: Templates) -> Request:
    count = rng.randint(MAX_PARTS - 2, MAX_PARTS + 3)
    parts = [rng.choice(t.parts) if rng.random() < 0.3 else b"g%d" % i for i in range(count)]
    return Request(sized(t.multipart(parts)))


def garbage_parts(rng: random.Random, t: Templates) -> Request:
    parts = []
    for _ in range(rng.randint(1, 25)):
        kind = rng.random()
        if kind < 0.3:
            parts.append(rng.randbytes(rng.randint(0, 2000)).replace(b"--XyZ", b"--xyz"))
        elif kind < 0.6:
            parts.append(b"\0" * 128 + b"DICM" + rng.randbytes(rng.randint(0, 500)))
        else:
            good = bytearray(rng.choice(t.parts))
            for _ in range(rng.randint(1, 10)):
                good[rng.randrange(len(good))] = rng.randrange(256)
            parts.append(bytes(good).replace(b"--XyZ", b"--xyz"))
    return Request(sized(t.multipart(parts)))


def byte_flips(rng: random.Random, t: Templates) -> Request:
    data = bytearray(rng.choice([valid_sized, valid_chunked])(rng, t).data)
    for _ in range(rng.randint(1, 8)):
        position = (
            rng.randrange(min(len(data), 400)) if rng.random() < 0.7 else rng.randrange(len(data))
        )
        data[position] = rng.randrange(256)
    return Request(bytes(data))


MUTATIONS: dict[str, Mutation] = {
    "valid_sized": valid_sized,
    "valid_chunked": valid_chunked,
    "content_length": content_length,
    "duplicate_length": duplicate_length,
    "length_and_chunked": length_and_chunked,
    "transfer_coding": transfer_coding,
    "content_type": content_type,
    "expect_continue": expect_continue,
    "request_line": request_line,
    "header_garbage": header_garbage,
    "chunk_size": chunk_size,
    "chunk_separator": chunk_separator,
    "delimiters": delimiters,
    "truncated": truncated,
    "many_parts": many_parts,
    "garbage_parts": garbage_parts,
    "byte_flips": byte_flips,
}


# -- the exchange and the checks -------------------------------------------------------------


def exchange(port: int, request: Request) -> bytes:
    """Send the request; the node's whole answer (empty when it closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        with contextlib.suppress(OSError):  # the node may answer and close before reading all
            conn.sendall(request.data)
        if request.ending == "hang-up":
            return b""
        if request.ending == "half-close":
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except OSError:  # reset after the answer: what arrived is kept
            pass
    return answer


def status_of(answer: bytes) -> int | None:
    """The final status of a well-formed answer; None for a closed connection; raises on junk."""
    if not answer:
        return None
    interim = _INTERIM.match(answer)
    final = answer[interim.end() :] if interim else answer
    match = _STATUS_LINE.match(final)
    if match is None or b"\r\n\r\n" not in final:
        raise ValueError(f"not an HTTP answer: {answer[:120]!r}")
    return int(match[1])


def valid_store(port: int, dataset: Dataset) -> int | None:
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    body = Templates([]).multipart([buffer.getvalue()])
    return status_of(exchange(port, Request(sized(body))))


def wait_no_spool(data_dir: Path, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = [name for name in leftover_files(data_dir) if ".tmp-stow-" in name]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.mark.slow
def test_mutated_stow_rs_requests_never_break_the_node(tmp_path: Path) -> None:
    seed = int(os.environ.get("DICOM_NODE_FUZZ_SEED", DEFAULT_SEED))
    count = int(os.environ.get("DICOM_NODE_STOW_FUZZ_CASES", 800))
    print(f"\nSTOW-RS fuzz seed {seed} (DICOM_NODE_FUZZ_SEED), {count} requests")
    rng = random.Random(f"dicom-node-stow-fuzz/{seed}")
    template = small_cr(rows=32, columns=24)
    parts = []
    for _ in range(5):
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = io.BytesIO()
        template.save_as(buffer, enforce_file_format=True)
        parts.append(buffer.getvalue())
    templates = Templates(parts)
    names = sorted(MUTATIONS)

    node = SandboxNode(
        tmp_path / "sandbox",
        tmp_path / "node.log",
        dicomweb_port=free_port(),
        worker_threads=0,
        preload_models="false",
        network_timeout_seconds=NETWORK_TIMEOUT_SECONDS,
        stow_max_parts_per_request=MAX_PARTS,
    )
    port = int(node.env["DICOM_NODE_DICOMWEB_PORT"])
    problems: list[str] = []
    statuses: dict[str, Counter[int | None]] = defaultdict(Counter)
    started = time.monotonic()
    try:
        node.start(wait_models=False)
        for case in range(count):
            name = rng.choice(names)
            request = MUTATIONS[name](rng, templates)
            where = f"seed={seed} case={case} mutation={name}"
            answer = exchange(port, request)
            try:
                status = status_of(answer)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                status = None
            statuses[name][status] += 1
            wait = 0.0 if status is not None else LEFTOVER_WAIT_SECONDS
            if left := wait_no_spool(node.data_dir, wait):
                problems.append(f"{where}: temporary files left after the request: {left}")
            try:
                health = node.health()
            except OSError as exc:
                problems.append(f"{where}: /healthz did not answer ({type(exc).__name__})")
                health = {}
            if health.get("status") not in ("ok", "degraded"):
                problems.append(f"{where}: /healthz answered {health}")
            if (stored := valid_store(port, template)) != 200:
                problems.append(f"{where}: a valid STOW-RS request then got {stored}")
            if not node.running or len(problems) > 20:
                break
        seconds = time.monotonic() - started
        reader = JobLogReader(node.data_dir / "jobs.sqlite")
        problems += orphan_problems(node.data_dir, reader.instances(), reader.rejections())
        if not node.running:
            problems.append("the node exited")
    finally:
        node.stop()
    log = node.log_text()
    problems += [f"node log: {p}" for p in log_line_problems(log)]
    problems += [f"node log: {line[:300]}" for line in log.splitlines() if "Traceback" in line]

    print(f"{sum(sum(c.values()) for c in statuses.values())} requests in {seconds:.0f} s")
    for name in names:
        histogram = ", ".join(
            f"{s or 'closed'}: {n}" for s, n in sorted(statuses[name].items(), key=str)
        )
        print(f"  {name:20s} {histogram}")
    assert not problems, f"{len(problems)} problem(s), seed {seed}:\n" + "\n".join(problems[:40])

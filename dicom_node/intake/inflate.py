"""Reading Part 10 files, with Deflated Explicit VR Little Endian inflated as a bounded stream.

pydicom inflates a deflated data set whole, in memory, before reading its first element: a
1 MiB request of deflated zeros becomes a 1 GiB ``bytes`` (and a copy) while only its header
is wanted.  Here the deflate stream (raw deflate, PS3.5 A.5) is inflated as it is read, a
chunk at a time, and counted: more than the limit (``max_instance_mb``, which thus bounds what
an instance is once inflated, not its compressed bytes) raises ``InflateLimitExceeded`` at the
chunk that crosses it, or before inflating anything when a value is said to end past it.  A
header read (values over ``defer_size`` skipped) holds one window of inflated bytes whatever
the instance's size; a whole read holds the inflated data set (and, while a large value is
read, one copy of it).  Other transfer syntaxes are read by pydicom as before.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import BinaryIO, cast

import pydicom
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian

COMPRESSED_CHUNK = 64 * 1024
INFLATED_CHUNK = 1024 * 1024
# Inflated bytes kept behind the read position: pydicom steps back a few bytes at most.
WINDOW = 64 * 1024


class InflateLimitExceeded(Exception):
    """The deflated data set inflates to more than the limit."""


class InflateError(Exception):
    """The deflate stream is corrupt or ends early."""


def read_part10(path: Path, max_inflated_bytes: int, defer_size: int | None = None) -> Dataset:
    """The file's data set with its file meta; values longer than ``defer_size`` stay unread.

    Deflated data sets inflate to at most ``max_inflated_bytes`` (``InflateLimitExceeded``);
    the result then carries no file name to read deferred values from, so a header read must
    not ask for them.
    """
    with path.open("rb") as handle:
        read_preamble(handle, False)
        meta = read_dataset(handle, False, True, stop_when=_not_file_meta)
        if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            stream = InflatingReader(handle, max_inflated_bytes)
            # read_dataset takes any object with read, seek and tell (pydicom's docs).
            dataset = read_dataset(cast(BinaryIO, stream), False, True, defer_size=defer_size)
            stream.finish()
            dataset.file_meta = FileMetaDataset(meta)
            return dataset
    return pydicom.dcmread(path, defer_size=defer_size)


def _not_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 0x0002


class InflatingReader:
    """A read-only file object over a raw deflate stream: ``read``, ``tell`` and ``seek``
    forward anywhere or back within ``WINDOW`` bytes (what pydicom's parser needs)."""

    def __init__(self, compressed: BinaryIO, limit: int) -> None:
        self._compressed = compressed
        self._limit = limit
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buffer = bytearray()  # inflated bytes from _start on
        self._start = 0
        self._position = 0
        self._ended = False

    @property
    def inflated(self) -> int:
        """Inflated bytes so far."""
        return self._start + len(self._buffer)

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self._position + offset
        if whence not in (0, 1) or target < self._start:
            raise OSError("an inflating reader cannot seek there")
        self._position = target
        return target

    def read(self, size: int = -1) -> bytes:
        end = self._limit + 1 if size < 0 else self._position + size
        if end > self._limit:  # a value said to end past the limit: refused before inflating
            raise InflateLimitExceeded(f"the data set inflates to more than {self._limit} bytes")
        self._fill(end)
        begin = self._position - self._start
        stop = min(end - self._start, len(self._buffer))
        if begin >= stop:
            return b""
        data = bytes(memoryview(self._buffer)[begin:stop])  # one copy, not two
        self._position = self._start + stop
        self._trim()
        return data

    def finish(self) -> None:
        """Inflate whatever the parser left unread, so that the limit covers the whole stream."""
        while not self._ended:
            self._inflate_chunk()
            self._position = self.inflated
            self._trim()

    def _fill(self, end: int) -> None:
        while self.inflated < end and not self._ended:
            self._inflate_chunk()
            self._trim()

    def _trim(self) -> None:
        """Drop what lies more than ``WINDOW`` behind the read position."""
        drop = min(self._position - WINDOW - self._start, len(self._buffer))
        if drop > 0:
            del self._buffer[:drop]
            self._start += drop

    def _inflate_chunk(self) -> None:
        source = self._inflater.unconsumed_tail
        if not source:
            source = self._compressed.read(COMPRESSED_CHUNK)
            if not source:
                raise InflateError("the deflated data set ends before its deflate stream")
        try:
            data = self._inflater.decompress(source, INFLATED_CHUNK)
        except zlib.error:
            raise InflateError("the deflate stream is corrupt") from None
        if self.inflated + len(data) > self._limit:
            raise InflateLimitExceeded(f"the data set inflates to more than {self._limit} bytes")
        self._buffer += data
        self._ended = self._inflater.eof

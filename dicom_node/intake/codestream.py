"""What a data set's pixels will cost to decode, checked before any decoder runs.

A decoder allocates what the codestream's own header says, not what Rows and Columns say: a
3 KB JPEG whose frame header claims 30000 x 30000 pixels makes the decoder build a 900-megapixel
image before pydicom notices the mismatch.  So intake (C-STORE and STOW-RS) and the worker
read each frame's header without decoding and refuse one that disagrees with the data set:

* JPEG (baseline, extended, lossless, JPEG-LS): the SOF marker's height, width, components
  and precision;
* JPEG 2000: the SIZ marker's image size, components, precision and tile count;
* RLE: the segment count and offsets of the 64-byte header (one segment per byte of each
  sample); the worker decodes RLE with a decoder that never writes more than Rows x Columns
  bytes per segment (``dicom_node.pixels.decoded_pixels``), so a segment cannot grow either.

The whole image is bounded too: Rows x Columns x frames x samples x Bits Allocated above
``max_decoded_mb`` is refused.  Each check raises ``InstanceRejected`` with the status intake
answers; the worker turns it into a failed job.  Only headers are read: a frame costs a few
small reads, whatever its size.
"""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pydicom import Dataset
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pydicom.uid import (
    JPEGLossless as JPEGLosslessP14,
)

from dicom_node.errors import DicomStatus, InstanceRejected

MIB = 1024 * 1024
_INVALID = DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
_UNREADABLE = DicomStatus.CANNOT_UNDERSTAND

JPEG_SYNTAXES = frozenset(
    {
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLosslessP14,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
    }
)
J2K_SYNTAXES = frozenset({JPEG2000, JPEG2000Lossless})

# Walks are bounded whatever the bytes say: fragments of one Pixel Data, marker segments
# before a JPEG frame header, boxes before a JP2 codestream, tiles of a JPEG 2000 image.
MAX_FRAGMENTS = 100_000
MAX_MARKERS = 256
# Header reads for the whole Pixel Data (a few dozen per honest frame): a few seconds at most.
MAX_HEADER_READS = 1_000_000
MAX_BOXES = 64
MAX_J2K_TILES = 65_536
# Bytes skipped while looking for the next JPEG marker (decoders skip such fill as well).
MAX_MARKER_GAP = 64
# RLE segments are counted a chunk at a time; no-op runs (header 128) tolerated per segment.
RLE_CHUNK = 1024 * 1024
MAX_RLE_NOOPS = 1024

_ITEM = 0xE000FFFE  # (FFFE,E000) read as a little-endian UL
_SEQUENCE_DELIMITER = 0xE0DDFFFE
_JPEG_SOI = b"\xff\xd8"
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
# Start Of Frame: baseline, extended, progressive, lossless (Huffman and arithmetic, with
# their differential forms) and JPEG-LS (SOF55).  C4, C8 and CC are other markers.
_JPEG_SOF = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})
# Markers without a length: TEM, RST0-7 (SOI is read before the walk).
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


@dataclass(frozen=True)
class Geometry:
    """What the data set says its pixels are."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    frames: int

    @property
    def decoded_bytes(self) -> int:
        pixels = self.rows * self.columns * self.samples * self.frames
        return (pixels * self.bits_allocated + 7) // 8

    def describe(self) -> str:
        return (
            f"{self.rows}x{self.columns}, {self.samples} sample(s), "
            f"{self.bits_allocated} bits allocated, {self.frames} frame(s)"
        )


def geometry_of(header: Dataset) -> Geometry:
    """The image pixel description; ``0xA900`` when it is incomplete or impossible."""
    try:
        geometry = Geometry(
            rows=int(header.Rows),
            columns=int(header.Columns),
            samples=int(header.get("SamplesPerPixel", 1) or 1),
            bits_allocated=int(header.BitsAllocated),
            frames=int(header.get("NumberOfFrames", 1) or 1),
        )
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        raise InstanceRejected(
            _INVALID, f"image pixel description incomplete ({type(exc).__name__})"
        ) from None
    values = (geometry.rows, geometry.columns, geometry.samples, geometry.frames)
    if min(*values, geometry.bits_allocated) <= 0 or geometry.bits_allocated > 64:
        raise InstanceRejected(
            _INVALID,
            f"image pixel description invalid: {geometry.rows}x{geometry.columns}, "
            f"{geometry.bits_allocated} bits allocated, {geometry.samples} sample(s), "
            f"{geometry.frames} frame(s)",
        )
    return geometry


def check_decoded_size(geometry: Geometry, max_decoded_mb: int) -> None:
    """``0xA700`` when the pixels would decode to more than ``max_decoded_mb``."""
    size = geometry.decoded_bytes
    if size > max_decoded_mb * MIB:
        raise InstanceRejected(
            DicomStatus.OUT_OF_RESOURCES,
            f"pixels would decode to {size / MIB:.0f} MiB, more than "
            f"max_decoded_mb={max_decoded_mb}",
        )


def is_checked(transfer_syntax: str) -> bool:
    """Whether ``check_frames`` reads this syntax's codestreams (native data needs no decoder)."""
    return transfer_syntax in JPEG_SYNTAXES | J2K_SYNTAXES | {RLELossless}


def check_dataset(dataset: Dataset, transfer_syntax: str, max_decoded_mb: int) -> None:
    """The worker's check of a data set read whole: size bound, then each frame's header."""
    geometry = geometry_of(dataset)
    check_decoded_size(geometry, max_decoded_mb)
    if is_checked(transfer_syntax) and "PixelData" in dataset:
        value = dataset.PixelData
        check_frames(io.BytesIO(value), len(value), transfer_syntax, geometry)


def check_frames(stream: BinaryIO, end: int, transfer_syntax: str, geometry: Geometry) -> None:
    """Check every frame header of the encapsulated Pixel Data value that starts at
    ``stream``'s position and ends before ``end`` (or at its Sequence Delimitation Item).

    Raises ``InstanceRejected``: ``0xA900`` when a header disagrees with ``geometry``, ``0xC000``
    when the encapsulation or a header cannot be read.
    """
    fragments = _fragments(stream, end)
    if not fragments:
        raise InstanceRejected(_UNREADABLE, "encapsulated Pixel Data holds no fragment")
    if transfer_syntax == RLELossless:
        _check_rle(stream, fragments, geometry)
        return
    jpeg = transfer_syntax in JPEG_SYNTAXES
    budget = _Budget()
    for index, (offset, _length) in enumerate(fragments):
        stream.seek(offset)
        head = stream.read(len(_JP2_SIGNATURE))
        if jpeg and head.startswith(_JPEG_SOI):
            _check_jpeg_frame(_FrameReader(stream, fragments[index:], budget), geometry)
        elif not jpeg and (head.startswith(_J2K_SOC_SIZ) or head == _JP2_SIGNATURE):
            _check_j2k_frame(_FrameReader(stream, fragments[index:], budget), geometry)
        elif index == 0:
            kind = "JPEG" if jpeg else "JPEG 2000"
            raise InstanceRejected(
                _UNREADABLE, f"Pixel Data does not start with a {kind} codestream"
            )
        # Other fragments continue a frame whose header was checked at its start.


# -- encapsulation (PS3.5 A.4) ----------------------------------------------------------------


def _fragments(stream: BinaryIO, end: int) -> list[tuple[int, int]]:
    """(offset, length) of each fragment, after the Basic Offset Table item."""
    found: list[tuple[int, int]] = []
    first = True
    while stream.tell() + 8 <= end:
        tag, length = struct.unpack("<LL", _read_exactly(stream, 8, "an item header"))
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM or length == 0xFFFFFFFF:
            raise InstanceRejected(
                _UNREADABLE, "encapsulated Pixel Data has an invalid item (not (FFFE,E000))"
            )
        offset = stream.tell()
        if offset + length > end:
            raise InstanceRejected(_UNREADABLE, "encapsulated Pixel Data is truncated")
        if not first:
            found.append((offset, length))
            if len(found) > MAX_FRAGMENTS:
                raise InstanceRejected(
                    _UNREADABLE, f"encapsulated Pixel Data has more than {MAX_FRAGMENTS} fragments"
                )
        first = False
        stream.seek(offset + length)
    return found


class _Budget:
    """Header reads left for one Pixel Data value."""

    def __init__(self) -> None:
        self.left = MAX_HEADER_READS

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise InstanceRejected(
                _UNREADABLE, f"Pixel Data frame headers take more than {MAX_HEADER_READS} reads"
            )


class _FrameReader:
    """Forward reads through one frame's bytes, which may span several fragments."""

    def __init__(self, stream: BinaryIO, fragments: list[tuple[int, int]], budget: _Budget) -> None:
        self._stream = stream
        self._extents: Iterator[tuple[int, int]] = iter(fragments)
        self._budget = budget
        self._position = 0
        self._left = 0

    def read(self, size: int, what: str) -> bytes:
        self._budget.spend()
        chunks = []
        while size > 0:
            if self._left == 0:
                self._next_extent(what)
            take = min(size, self._left)
            self._stream.seek(self._position)
            chunk = _read_exactly(self._stream, take, what)
            chunks.append(chunk)
            self._position += take
            self._left -= take
            size -= take
        return b"".join(chunks)

    def skip(self, size: int, what: str) -> None:
        self._budget.spend()
        while size > 0:
            if self._left == 0:
                self._next_extent(what)
            take = min(size, self._left)
            self._position += take
            self._left -= take
            size -= take

    def _next_extent(self, what: str) -> None:
        try:
            self._position, self._left = next(self._extents)
        except StopIteration:
            raise InstanceRejected(_UNREADABLE, f"Pixel Data ends before {what}") from None


def _read_exactly(stream: BinaryIO, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise InstanceRejected(_UNREADABLE, f"Pixel Data ends before {what}")
    return data


# -- JPEG (ITU-T T.81 B.2, T.87 for JPEG-LS) ---------------------------------------------------


def _check_jpeg_frame(frame: _FrameReader, geometry: Geometry) -> None:
    frame.read(2, "the JPEG start of image")
    for _ in range(MAX_MARKERS):
        marker = _next_jpeg_marker(frame)
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # SOI, EOI, SOS: no frame header came first
            break
        (length,) = struct.unpack(">H", frame.read(2, "a JPEG marker segment"))
        if length < 2:
            break
        if marker in _JPEG_SOF:
            precision, height, width, components = struct.unpack(
                ">BHHB", frame.read(6, "the JPEG frame header")
            )
            _compare("JPEG frame header", geometry, height, width, components, precision)
            return
        frame.skip(length - 2, "a JPEG marker segment")
    raise InstanceRejected(_UNREADABLE, "a JPEG frame has no frame header (SOF) before its scan")


def _next_jpeg_marker(frame: _FrameReader) -> int:
    """The next marker's code; fill bytes (0xFF) and a little garbage are skipped (decoders
    skip them too)."""
    gap = 0
    byte = frame.read(1, "a JPEG marker")[0]
    while byte != 0xFF:
        gap += 1
        if gap > MAX_MARKER_GAP:
            raise InstanceRejected(_UNREADABLE, "a JPEG frame header cannot be read")
        byte = frame.read(1, "a JPEG marker")[0]
    while byte == 0xFF:
        byte = frame.read(1, "a JPEG marker")[0]
    return byte


# -- JPEG 2000 (ITU-T T.800 A.5.1, I.5) --------------------------------------------------------


def _check_j2k_frame(frame: _FrameReader, geometry: Geometry) -> None:
    head = frame.read(4, "the JPEG 2000 codestream")
    if head != _J2K_SOC_SIZ:  # a JP2 file: find its contiguous codestream box
        frame.skip(len(_JP2_SIGNATURE) - 4, "the JP2 signature")
        _find_jp2_codestream(frame)
        if frame.read(4, "the JPEG 2000 codestream") != _J2K_SOC_SIZ:
            raise InstanceRejected(_UNREADABLE, "a JPEG 2000 codestream does not start with SIZ")
    (length,) = struct.unpack(">H", frame.read(2, "the JPEG 2000 SIZ marker"))
    fields = struct.unpack(">H8LH", frame.read(36, "the JPEG 2000 SIZ marker"))
    _rsiz, xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz, csiz = fields
    if (
        length < 41
        or not 0 < csiz <= 16384
        or not (xtsiz and ytsiz)
        or xosiz > xsiz
        or (yosiz > ysiz)
    ):
        raise InstanceRejected(_UNREADABLE, "a JPEG 2000 SIZ marker is invalid")
    precision = 0
    for _ in range(min(csiz, 64)):  # Ssiz, XRsiz, YRsiz per component
        ssiz, _xr, _yr = frame.read(3, "the JPEG 2000 SIZ marker")
        precision = max(precision, (ssiz & 0x7F) + 1)
    _compare("JPEG 2000 SIZ marker", geometry, ysiz - yosiz, xsiz - xosiz, csiz, precision)
    tiles = -(-(xsiz - xtosiz) // xtsiz) * -(-(ysiz - ytosiz) // ytsiz)
    if tiles > MAX_J2K_TILES:
        raise InstanceRejected(
            _INVALID, f"a JPEG 2000 image of {tiles} tiles (more than {MAX_J2K_TILES})"
        )


def _find_jp2_codestream(frame: _FrameReader) -> None:
    """Skip JP2 boxes up to the contiguous codestream box ('jp2c')."""
    for _ in range(MAX_BOXES):
        size, kind = struct.unpack(">L4s", frame.read(8, "a JP2 box"))
        header = 8
        if size == 1:
            (size,) = struct.unpack(">Q", frame.read(8, "a JP2 box"))
            header = 16
        if kind == b"jp2c":
            return
        if size < header:  # 0: the box runs to the end, and it is not the codestream
            break
        frame.skip(size - header, "a JP2 box")
    raise InstanceRejected(_UNREADABLE, "a JP2 file holds no codestream box")


# -- RLE (PS3.5 G) -----------------------------------------------------------------------------


def _check_rle(stream: BinaryIO, fragments: list[tuple[int, int]], geometry: Geometry) -> None:
    if geometry.frames == 1:
        starts = [0]  # one frame may be split over fragments; the decoder joins them
    elif len(fragments) == geometry.frames:
        starts = list(range(len(fragments)))
    else:
        raise InstanceRejected(
            _UNREADABLE,
            f"RLE Pixel Data has {len(fragments)} fragments for {geometry.frames} frames "
            "(each frame is one fragment)",
        )
    budget = _Budget()
    for start in starts:
        extents = fragments[start:] if geometry.frames == 1 else [fragments[start]]
        frame = _FrameReader(stream, extents, budget)
        _check_rle_frame(frame, sum(n for _, n in extents), geometry)


def _check_rle_frame(frame: _FrameReader, length: int, geometry: Geometry) -> None:
    """The header (PS3.5 G.5), then each segment's runs counted without decoding."""
    count, *offsets = struct.unpack("<16L", frame.read(64, "an RLE header"))
    expected = geometry.samples * -(-geometry.bits_allocated // 8)
    if count != expected:
        raise InstanceRejected(
            _INVALID,
            f"an RLE frame has {count} segments; {geometry.describe()} needs {expected}",
        )
    bounds = [*offsets[:count], length]
    if bounds[0] != 64 or any(b <= a for a, b in itertools.pairwise(bounds)):
        raise InstanceRejected(
            _UNREADABLE, "an RLE frame's segment offsets are out of order or out of range"
        )
    wanted = geometry.rows * geometry.columns
    for number, (begin, end) in enumerate(itertools.pairwise(bounds), start=1):
        decoded = _rle_segment_length(frame, end - begin, wanted, number)
        if decoded != wanted:
            more = decoded > wanted
            raise InstanceRejected(
                _INVALID if more else _UNREADABLE,
                f"RLE segment {number} decodes to {'more' if more else 'fewer'} than "
                f"Rows x Columns ({geometry.rows}x{geometry.columns}) bytes",
            )


def _rle_segment_length(frame: _FrameReader, size: int, wanted: int, number: int) -> int:
    """How many bytes a segment of ``size`` bytes decodes to, counted up to one run past
    ``wanted``; the runs are read, never expanded (a decoder writes every run it finds).

    PackBits (PS3.5 G.3.2): header n < 128 copies the next n + 1 bytes, n > 128 repeats the
    next byte 257 - n times, 128 does nothing; a run cut by the segment's end yields what is
    there (a padding byte yields nothing).  Each run yields a byte or more, so an honest
    segment has at most ``wanted`` runs and a few no-ops.
    """
    decoded = runs = overhang = last = 0
    literal = True
    while size > 0 and decoded <= wanted:
        chunk = frame.read(min(size, RLE_CHUNK), "an RLE segment")
        size -= len(chunk)
        position, end = overhang, len(chunk)
        while position < end and decoded <= wanted:
            header = chunk[position]
            if header < 128:
                last, literal = header + 1, True
                position += header + 2
            elif header > 128:
                last, literal = 257 - header, False
                position += 2
            else:
                last, literal = 0, True
                position += 1
            decoded += last
            runs += 1
        if runs > wanted + MAX_RLE_NOOPS:
            raise InstanceRejected(_UNREADABLE, f"RLE segment {number} holds more runs than bytes")
        overhang = position - end
    if size == 0 and overhang > 0:  # the last run is cut: a literal keeps what is there
        decoded -= overhang if literal else last
    frame.skip(size, "an RLE segment")
    return decoded


# -- the comparison ----------------------------------------------------------------------------


def _compare(
    source: str, geometry: Geometry, rows: int, columns: int, components: int, precision: int
) -> None:
    if (rows, columns, components) != (geometry.rows, geometry.columns, geometry.samples) or (
        precision > geometry.bits_allocated
    ):
        raise InstanceRejected(
            _INVALID,
            f"the {source} describes {rows}x{columns}, {components} component(s) of "
            f"{precision} bits; the data set says {geometry.describe()}",
        )

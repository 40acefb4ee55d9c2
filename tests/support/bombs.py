"""Decode and inflate bombs (issue 26): small data sets whose codestream or deflate stream says
far more than their header, built from the real chest CR and tiny hand-made codestreams.

* ``jpeg_bomb``: a valid JPEG of the header's size whose frame header (SOF) is patched;
* ``j2k_bomb``: a JPEG 2000 codestream whose SIZ marker is patched;
* ``rle_tampered``: an honest RLE frame with a wrong segment count, broken offsets, or a
  segment whose runs decode to far more than Rows x Columns bytes;
* ``deflate_bomb``: Deflated Explicit VR Little Endian whose deflate stream inflates to a
  large Pixel Data of zeros (about 1000:1).

Each returns the data set (encapsulated pixel data) or the bytes as they go on the wire;
``part10`` wraps wire bytes in a Part 10 file, ``wire_item`` makes a C-STORE item of them.
Nothing large is ever held: a MiB of deflated zeros is compressed once and repeated.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    JPEG2000,
    PYDICOM_IMPLEMENTATION_UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from tests.support.factories import small_cr
from tests.support.mutations import Encoded, Item

ROWS, COLUMNS = 128, 96
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def chest_cr_8bit(rows: int = ROWS, columns: int = COLUMNS) -> Dataset:
    """The real chest CR cut down to ``rows`` x ``columns``, 8 bits (for JPEG baseline)."""
    ds = small_cr(rows, columns)
    pixels = (ds.pixel_array.astype(np.float32) / max(int(ds.pixel_array.max()), 1) * 255).astype(
        np.uint8
    )
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = pixels.tobytes()
    return ds


def encapsulated(ds: Dataset, frames: list[bytes], transfer_syntax: str) -> Dataset:
    """``ds`` with these frames as its encapsulated Pixel Data, in ``transfer_syntax``."""
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


def encapsulate_fragments(fragments: list[bytes]) -> bytes:
    """An encapsulated Pixel Data value: an empty Basic Offset Table, then these fragments
    (padded to even length), as pydicom holds it (no Sequence Delimitation Item)."""
    items = [b"\xfe\xff\x00\xe0" + struct.pack("<L", 0)]
    for fragment in fragments:
        padded = fragment + b"\x00" * (len(fragment) % 2)
        items.append(b"\xfe\xff\x00\xe0" + struct.pack("<L", len(padded)) + padded)
    return b"".join(items)


def encode(ds: Dataset) -> bytes:
    """The data set as Explicit VR Little Endian wire bytes."""
    return Encoded.from_dataset(ds, implicit=False).tobytes()


def deflate(raw: bytes) -> bytes:
    """Raw deflate (PS3.5 A.5)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(raw) + compressor.flush()


def honest_jpeg(ds: Dataset) -> bytes:
    """``ds``'s 8-bit pixels as a baseline JPEG (Pillow)."""
    buffer = io.BytesIO()
    Image.fromarray(np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns)).save(
        buffer, format="JPEG", quality=90
    )
    return buffer.getvalue()


def sof_offset(codestream: bytes) -> int:
    """Where the JPEG frame header (SOF0-SOF15 but DHT/JPG/DAC, or SOF55) starts."""
    position = 2
    while True:
        marker = codestream[position + 1]
        (length,) = struct.unpack(">H", codestream[position + 2 : position + 4])
        if marker in {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7}:
            return position
        position += 2 + length


def patch_jpeg(
    codestream: bytes,
    rows: int,
    columns: int,
    marker: int | None = None,
    components: int | None = None,
    precision: int | None = None,
) -> bytes:
    """The JPEG with its frame header saying ``rows`` x ``columns`` (and optionally another SOF
    marker, component count or precision)."""
    data = bytearray(codestream)
    at = sof_offset(codestream)
    if marker is not None:
        data[at + 1] = marker
    data[at + 5 : at + 9] = struct.pack(">HH", rows, columns)
    if components is not None:
        data[at + 9] = components
    if precision is not None:
        data[at + 4] = precision
    return bytes(data)


def jpeg_bomb(frame_rows: int, frame_columns: int, **patch: int) -> Dataset:
    """A 128 x 96 CR whose JPEG Baseline frame header says ``frame_rows`` x ``frame_columns``."""
    ds = chest_cr_8bit()
    codestream = patch_jpeg(honest_jpeg(ds), frame_rows, frame_columns, **patch)
    return encapsulated(ds, [codestream], JPEGBaseline8Bit)


def honest_j2k(ds: Dataset) -> bytes:
    """``ds``'s pixels as a lossless JPEG 2000 codestream (pylibjpeg-openjpeg)."""
    copy = Dataset()
    copy.update(ds)
    copy.file_meta = FileMetaDataset(ds.file_meta)
    copy.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    return next(generate_frames(copy.PixelData, number_of_frames=1))


def patch_j2k(
    codestream: bytes, rows: int, columns: int, tile: tuple[int, int] | None = None
) -> bytes:
    """The codestream with its SIZ saying ``rows`` x ``columns`` (tiles ``tile`` if given)."""
    data = bytearray(codestream)
    assert data[:4] == b"\xff\x4f\xff\x51"
    data[8:16] = struct.pack(">LL", columns, rows)  # Xsiz, Ysiz (offsets are 0)
    if tile is not None:
        data[24:32] = struct.pack(">LL", tile[1], tile[0])  # XTsiz, YTsiz
    return bytes(data)


def j2k_bomb(frame_rows: int, frame_columns: int, tile: tuple[int, int] | None = None) -> Dataset:
    """A 128 x 96 CR whose JPEG 2000 SIZ says ``frame_rows`` x ``frame_columns`` (in the
    JPEG 2000 syntax, which takes lossless codestreams too)."""
    ds = small_cr(ROWS, COLUMNS)
    codestream = patch_j2k(honest_j2k(ds), frame_rows, frame_columns, tile)
    return encapsulated(ds, [codestream], JPEG2000)


def honest_rle(ds: Dataset) -> bytes:
    """``ds``'s pixels as one RLE Lossless frame (pydicom's encoder)."""
    copy = Dataset()
    copy.update(ds)
    copy.file_meta = FileMetaDataset(ds.file_meta)
    copy.compress(RLELossless)
    return next(generate_frames(copy.PixelData, number_of_frames=1))


def large_rle_cr(rows: int, columns: int) -> Dataset:
    """An honest large CR: the real chest CR resized to ``rows`` x ``columns`` (16 bits), in RLE
    Lossless (pylibjpeg-rle's encoder)."""
    ds = small_cr(64, 48)
    source = chest_cr_pixels()
    image = Image.fromarray(source.astype(np.int32)).resize((columns, rows), Image.BILINEAR)
    pixels = np.asarray(image).astype(np.uint16)
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = pixels.tobytes()
    ds.compress(RLELossless, encoding_plugin="pylibjpeg")
    return ds


def chest_cr_pixels() -> np.ndarray:
    """The real chest CR's stored values (1955 x 1841)."""
    from tests.support.factories import chest_cr

    return np.asarray(chest_cr().pixel_array)


def rle_frame(segments: list[bytes]) -> bytes:
    """An RLE frame of these encoded segments (64-byte header, PS3.5 G.5)."""
    offsets, position = [], 64
    for segment in segments:
        offsets.append(position)
        position += len(segment)
    header = struct.pack("<16L", len(segments), *offsets, *([0] * (15 - len(offsets))))
    return header + b"".join(segments)


def replicate_runs(decoded_bytes: int) -> bytes:
    """An RLE segment of replicate runs (2 bytes -> 128 bytes each) decoding to about this many
    zero bytes: 64 times its own size."""
    return b"\x81\x00" * -(-decoded_bytes // 128)


def rle_tampered(kind: str, overlong_mb: int = 64) -> Dataset:
    """A 128 x 96 16-bit CR in RLE whose frame is tampered: ``segments`` (15 segments),
    ``offsets`` (one beyond the frame), ``order`` (offsets not increasing), ``overlong`` (the
    high-byte segment decodes to ``overlong_mb`` MiB)."""
    ds = small_cr(ROWS, COLUMNS)
    frame = bytearray(honest_rle(ds))
    _count, *offsets = struct.unpack("<16L", frame[:64])
    if kind == "segments":
        frame[:4] = struct.pack("<L", 15)
    elif kind == "offsets":
        frame[8:12] = struct.pack("<L", len(frame) + 1000)
    elif kind == "order":
        frame[4:12] = struct.pack("<LL", offsets[1], offsets[0])
    elif kind == "overlong":
        low = bytes(frame[offsets[1] :])
        frame = bytearray(rle_frame([replicate_runs(overlong_mb * 1024 * 1024), low]))
    else:
        raise ValueError(kind)
    return encapsulated(ds, [bytes(frame)], RLELossless)


def honest(kind: str) -> Dataset:
    """A valid 128 x 96 CR in ``jpeg`` (Baseline), ``j2k`` (JPEG 2000) or ``rle``."""
    if kind == "jpeg":
        ds = chest_cr_8bit()
        return encapsulated(ds, [honest_jpeg(ds)], JPEGBaseline8Bit)
    ds = small_cr(ROWS, COLUMNS)
    if kind == "j2k":
        return encapsulated(ds, [honest_j2k(ds)], JPEG2000)
    return encapsulated(ds, [honest_rle(ds)], RLELossless)


def deflate_bomb(
    inflated_mb: int, declared: tuple[int, int] = (ROWS, COLUMNS)
) -> tuple[Dataset, bytes]:
    """A CR header saying ``declared`` 16-bit pixels, and its Deflated Explicit VR Little Endian
    wire bytes whose Pixel Data is ``inflated_mb`` MiB of zeros (about 1 KiB per MiB).

    Each MiB of zeros is compressed once and repeated: a full flush before and after it makes
    its deflate blocks independent of what precedes them.
    """
    ds = small_cr(*declared) if declared[0] * declared[1] <= 1 << 20 else small_cr()
    ds.Rows, ds.Columns = declared
    del ds.PixelData
    if "DataSetTrailingPadding" in ds:  # Pixel Data goes last
        del ds.DataSetTrailingPadding
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<L", inflated_mb * 1024 * 1024)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = compressor.compress(encode(ds) + pixel_header) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(1024 * 1024)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return ds, head + block * inflated_mb + compressor.flush()


def part10(ds_or_wire: Dataset | bytes, meta_from: Dataset, transfer_syntax: str) -> bytes:
    """A Part 10 file: preamble, ``meta_from``'s file meta with ``transfer_syntax``, then the
    data set (a ``Dataset`` is encoded as is; ``bytes`` are the wire bytes)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = meta_from.SOPClassUID
    meta.MediaStorageSOPInstanceUID = meta_from.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    buffer = io.BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    if isinstance(ds_or_wire, Dataset):
        buffer.write(encode(ds_or_wire))
    else:
        buffer.write(ds_or_wire)
    return buffer.getvalue()


def wire_item(ds: Dataset, payload: bytes | None = None, transfer_syntax: str = "") -> Item:
    """A C-STORE item: ``ds`` encoded in its own transfer syntax, or ``payload`` as given."""
    syntax = transfer_syntax or str(ds.file_meta.TransferSyntaxUID)
    data = payload if payload is not None else encode(ds)
    return Item(
        context_sop_class=str(ds.SOPClassUID),
        transfer_syntax=syntax,
        affected_sop_instance=str(ds.SOPInstanceUID),
        payload=data,
        study_uid=str(ds.StudyInstanceUID),
        sop_uid=str(ds.SOPInstanceUID),
    )

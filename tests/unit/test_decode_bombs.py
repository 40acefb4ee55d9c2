"""Decode and inflate bombs (issue 26): refused at intake (C-STORE over real associations,
STOW-RS over real HTTP) and by the worker before any decoder runs, with memory measured in a
fresh interpreter where it is the point."""

from __future__ import annotations

import glob
import io
import os
import struct
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
import requests
from pydicom import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit

from dicom_node.admin.metrics import Metrics
from dicom_node.config import Settings
from dicom_node.errors import DicomStatus, InstanceRejected, PipelineError
from dicom_node.intake import codestream
from dicom_node.intake.filing import Intake
from dicom_node.intake.inflate import InflateLimitExceeded, InflatingReader, read_part10
from dicom_node.intake.scp import stow_accepted
from dicom_node.intake.stow_server import StowServer
from dicom_node.joblog import JobLog
from dicom_node.pixels import decoded_pixels
from dicom_node.worker import read_source
from tests.support import bombs
from tests.support.dicom_client import StoreSession
from tests.support.factories import small_cr
from tests.support.memory import peak_rise
from tests.support.net import free_port
from tests.support.scp import RunningScp, start_scp_in_process

MIB = 1024 * 1024


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[RunningScp]:
    yield from start_scp_in_process(tmp_path, max_instance_mb=8)


def _store(scp: RunningScp, ds: Dataset, payload: bytes | None = None, syntax: str = "") -> int:
    with StoreSession("127.0.0.1", scp.settings.port) as session:
        outcome = session.store(bombs.wire_item(ds, payload, syntax))
    assert outcome.status is not None, outcome.category
    return outcome.status


def _rejection(scp: RunningScp) -> str:
    [row] = [r for r in scp.joblog.admin.job_rows() if r.state == "rejected"]
    return row.error or ""


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


# -- intake: the codestream's own header against the data set's ------------------------------


@pytest.mark.parametrize(
    ("bomb", "reason"),
    [
        (lambda: bombs.jpeg_bomb(30000, 30000), "JPEG frame header describes 30000x30000"),
        (lambda: bombs.jpeg_bomb(96, 128), "JPEG frame header describes 96x128"),
        (lambda: bombs.jpeg_bomb(128, 96, components=3), "3 component(s)"),
        (lambda: bombs.jpeg_bomb(128, 96, precision=12), "of 12 bits"),
        (lambda: bombs.jpeg_bomb(60000, 60000, marker=0xC3), "describes 60000x60000"),  # lossless
        (lambda: bombs.jpeg_bomb(0, 96), "describes 0x96"),  # height left to a DNL marker
        (lambda: bombs.j2k_bomb(30000, 30000), "JPEG 2000 SIZ marker describes 30000x30000"),
        (lambda: bombs.rle_tampered("segments"), "an RLE frame has 15 segments"),
        (
            lambda: bombs.rle_tampered("overlong", overlong_mb=256),  # 4 MiB of runs
            "RLE segment 1 decodes to more than Rows x Columns (128x96) bytes",
        ),
    ],
)
def test_a_frame_header_that_disagrees_with_the_data_set_is_refused(
    scp: RunningScp, bomb: Callable[[], Dataset], reason: str
) -> None:
    assert _store(scp, bomb()) == 0xA900
    assert reason in _rejection(scp)
    assert _files(scp.settings.inbox_dir) == []
    assert len(_files(scp.settings.quarantine_dir)) == 1  # kept, as every invalid data set
    assert _store(scp, bombs.honest("jpeg")) == 0x0000  # the node goes on


@pytest.mark.parametrize("kind", ["offsets", "order"])
def test_rle_segment_offsets_out_of_range_are_refused(scp: RunningScp, kind: str) -> None:
    assert _store(scp, bombs.rle_tampered(kind)) == 0xC000
    assert "segment offsets are out of order or out of range" in _rejection(scp)


def test_a_jpeg_2000_of_too_many_tiles_is_refused(scp: RunningScp) -> None:
    ds = small_cr(512, 512)
    codestream_bytes = bombs.patch_j2k(bombs.honest_j2k(ds), 512, 512, tile=(1, 1))
    ds = bombs.encapsulated(ds, [codestream_bytes], "1.2.840.10008.1.2.4.91")
    assert _store(scp, ds) == 0xA900
    assert "262144 tiles" in _rejection(scp)


def test_pixel_data_without_a_codestream_is_refused(scp: RunningScp) -> None:
    ds = bombs.encapsulated(bombs.chest_cr_8bit(), [b"\x00" * 64], JPEGBaseline8Bit)
    assert _store(scp, ds) == 0xC000
    assert "does not start with a JPEG codestream" in _rejection(scp)


@pytest.mark.parametrize("kind", ["jpeg", "j2k", "rle"])
def test_honest_compressed_images_are_filed(scp: RunningScp, kind: str) -> None:
    ds = bombs.honest(kind)
    assert _store(scp, ds) == 0x0000
    [stored] = _files(scp.settings.inbox_dir)
    assert pydicom.dcmread(stored).pixel_array.shape == (bombs.ROWS, bombs.COLUMNS)


def test_a_frame_header_after_app_segments_and_a_fragment_boundary_is_found() -> None:
    """The SOF after a 60 KB APP2 segment, in the frame's second fragment: checked, and a
    tampered one found, where the decoder would find it."""
    ds = bombs.chest_cr_8bit()
    jpeg = bombs.honest_jpeg(ds)
    app2 = b"\xff\xe2" + struct.pack(">H", 60002) + bytes(60000)
    padded = jpeg[:2] + app2 + jpeg[2:]
    geometry = codestream.geometry_of(ds)
    for data, ok in ((padded, True), (bombs.patch_jpeg(padded, 4000, 4000), False)):
        fragments = bombs.encapsulate_fragments([data[:1000], data[1000:]])
        stream = io.BytesIO(fragments)
        if ok:
            codestream.check_frames(stream, len(fragments), JPEGBaseline8Bit, geometry)
        else:
            with pytest.raises(InstanceRejected, match="describes 4000x4000"):
                codestream.check_frames(stream, len(fragments), JPEGBaseline8Bit, geometry)


def test_a_jp2_file_is_checked_by_its_codestream() -> None:
    ds = small_cr(bombs.ROWS, bombs.COLUMNS)
    raw = bombs.patch_j2k(bombs.honest_j2k(ds), 30000, 30000)
    jp2 = bombs.JP2_SIGNATURE + _box(b"ftyp", b"jp2 \x00\x00\x00\x00jp2 ") + _box(b"jp2c", raw)
    value = bombs.encapsulate_fragments([jp2])
    with pytest.raises(InstanceRejected, match="describes 30000x30000"):
        codestream.check_frames(
            io.BytesIO(value), len(value), "1.2.840.10008.1.2.4.90", codestream.geometry_of(ds)
        )


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">L", 8 + len(payload)) + kind + payload


def test_every_decodable_compressed_test_file_of_pydicom_passes_the_check() -> None:
    """No false refusal on real codestreams: pydicom's and pydicom-data's test files."""
    root = Path(pydicom.data.get_testdata_file("RG1_UNCR.dcm") or "").parent.parent
    paths = glob.glob(f"{os.path.dirname(pydicom.data.__file__)}/**/*.dcm", recursive=True)
    paths += glob.glob(f"{root}/**/*.dcm", recursive=True)
    checked, refused = 0, []
    warnings.simplefilter("ignore")
    for path in sorted(set(paths)):
        try:
            ds = pydicom.dcmread(path)
            syntax = str(ds.file_meta.TransferSyntaxUID)
            if not codestream.is_checked(syntax) or "PixelData" not in ds:
                continue
            ds.pixel_array  # noqa: B018  # decodable: an honest file
        except Exception:
            continue
        checked += 1
        try:
            codestream.check_dataset(ds, syntax, 4096)
        except InstanceRejected as exc:
            refused.append(f"{Path(path).name}: {exc.reason}")
    assert checked >= 40
    assert refused == []


# -- the worker: checked before any decoder runs ---------------------------------------------


def test_the_worker_refuses_a_jpeg_bomb_without_decoding_it(tmp_path: Path) -> None:
    path = tmp_path / "bomb.dcm"
    bombs.jpeg_bomb(30000, 30000).save_as(path, enforce_file_format=True)
    with pytest.raises(PipelineError, match=r"describes 30000x30000.*; not decoded"):
        read_source(path, Settings(data_dir=tmp_path))
    # Measured: the worker's read and the X-ray decode, as a job runs them.  pydicom's decoders
    # took +4.3 GB and 30 s before the check.
    measured = peak_rise(
        f"""
        from pathlib import Path
        from dicom_node.config import Settings
        from dicom_node.errors import PipelineError
        from dicom_node.pipelines.xray.preprocessing import dataset_to_display
        from dicom_node.worker import read_source
        path = Path({str(path)!r})
        settings = Settings(data_dir=path.parent)
        """,
        """
        try:
            result = dataset_to_display(read_source(path, settings)).shape
        except PipelineError as exc:
            result = str(exc)
        """,
    )
    assert "not decoded" in measured["result"]
    assert measured["rise_mb"] < 64


def test_the_worker_refuses_pixels_over_max_decoded_mb(tmp_path: Path) -> None:
    path = tmp_path / "large.dcm"
    small_cr(1024, 1024).save_as(path, enforce_file_format=True)  # 2 MiB decoded
    with pytest.raises(PipelineError, match="max_decoded_mb=1; not decoded"):
        read_source(path, Settings(data_dir=tmp_path, max_decoded_mb=1))


def test_an_rle_segment_that_decodes_past_rows_times_columns_is_never_expanded(
    tmp_path: Path,
) -> None:
    """The worker counts the runs before decoding; the decoder itself stops at Rows x Columns
    bytes per segment too (pydicom's own grew the segment to 512 MiB before comparing)."""
    path = tmp_path / "rle.dcm"
    bombs.rle_tampered("overlong", overlong_mb=512).save_as(path, enforce_file_format=True)
    with pytest.raises(PipelineError, match="RLE segment 1 decodes to more than"):
        read_source(path, Settings(data_dir=tmp_path))
    measured = peak_rise(
        f"""
        import pydicom
        from dicom_node.pixels import decoded_pixels
        ds = pydicom.dcmread({str(path)!r})
        """,
        """
        try:
            result = decoded_pixels(ds).shape
        except ValueError as exc:
            result = str(exc)
        """,
    )
    assert measured["result"] == repr("the decoder stopped on data that overruns the image")
    assert measured["rise_mb"] < 64
    assert decoded_pixels(bombs.honest("rle")).shape == (bombs.ROWS, bombs.COLUMNS)


def test_a_short_rle_segment_cannot_be_understood(scp: RunningScp) -> None:
    ds = bombs.honest("rle")
    frame = bombs.rle_frame([bombs.replicate_runs(128), bombs.replicate_runs(128 * 96)])
    ds.PixelData = bombs.encapsulate_fragments([frame])
    assert _store(scp, ds) == 0xC000
    assert "RLE segment 1 decodes to fewer than Rows x Columns" in _rejection(scp)


def test_the_x_ray_display_costs_at_most_three_bytes_per_decoded_byte(tmp_path: Path) -> None:
    """A 4096 x 4096 16-bit CR with rescale and window (32 MiB decoded): the display is looked
    up per stored value; transforming the image itself took about 11 times its size."""
    ds = small_cr(64, 64)
    pixels = (np.arange(4096 * 4096, dtype=np.uint32) % 4096).astype(np.uint16)
    ds.Rows = ds.Columns = 4096
    ds.PixelData = pixels.tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.WindowCenter, ds.WindowWidth = 3000, 4000
    path = tmp_path / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    measured = peak_rise(
        f"""
        import pydicom
        from dicom_node.pipelines.xray.preprocessing import dataset_to_display
        ds = pydicom.dcmread({str(path)!r})
        """,
        "result = dataset_to_display(ds).dtype.name",
    )
    assert measured["result"] == "'float32'"
    assert measured["rise_mb"] < 3 * 32 + 16  # decoded copy + float32 display


# -- deflate: inflated as a stream, counted against max_instance_mb --------------------------


def _deflated_file(tmp_path: Path, inflated_mb: int) -> Path:
    header, wire = bombs.deflate_bomb(inflated_mb)
    path = tmp_path / "deflated.dcm"
    path.write_bytes(bombs.part10(wire, header, DeflatedExplicitVRLittleEndian))
    return path


def test_a_deflate_bomb_by_c_store_is_refused_with_nothing_kept(scp: RunningScp) -> None:
    header, wire = bombs.deflate_bomb(64)  # 64 KiB on the wire, 64 MiB inflated
    assert len(wire) < 128 * 1024
    assert _store(scp, header, wire, DeflatedExplicitVRLittleEndian) == 0xA700
    assert "deflated data set inflates to more than max_instance_mb=8" in _rejection(scp)
    assert _files(scp.settings.inbox_dir) == _files(scp.settings.quarantine_dir) == []
    honest = small_cr()
    wire = bombs.deflate(bombs.encode(honest))
    assert _store(scp, honest, wire, DeflatedExplicitVRLittleEndian) == 0x0000


def test_intake_inflates_a_deflate_bomb_as_a_stream(tmp_path: Path) -> None:
    """A 256 KiB part inflating to 256 MiB (over ``max_instance_mb``=64): pydicom inflated it
    whole while the header was read (+512 MB)."""
    path = _deflated_file(tmp_path, 256)
    measured = peak_rise(
        f"""
        from pathlib import Path
        from dicom_node.admin.metrics import Metrics
        from dicom_node.config import Settings
        from dicom_node.intake.filing import Intake, file_part10
        from dicom_node.intake.scp import stow_accepted
        from dicom_node.joblog import JobLog
        path = Path({str(path)!r})
        settings = Settings(data_dir=path.parent / "data", max_instance_mb=64, min_free_disk_mb=0)
        joblog = JobLog.open(settings.database_path)
        intake = Intake(settings, joblog.intake, Metrics(), lambda outcome, key: None)
        """,
        """
        outcome = file_part10(path, intake, "TEST", object(), stow_accepted())
        result = (outcome.status, outcome.reason)
        """,
    )
    assert measured["result"] == repr(
        (0xA700, "the deflated data set inflates to more than max_instance_mb=64")
    )
    assert measured["rise_mb"] < 32


def test_intake_reads_no_pixel_data_into_memory(tmp_path: Path) -> None:
    """Deferred values stay on disk while the header is checked (``get_item`` used to read
    them back in): a 96 MiB native CR."""
    ds = small_cr(64, 64)
    ds.Rows = ds.Columns = 7000
    ds.PixelData = bytes(7000 * 7000 * 2)
    path = tmp_path / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    del ds
    measured = peak_rise(
        f"""
        from pathlib import Path
        from dicom_node.intake.filing import _check_pixel_data, _read_header
        from dicom_node.config import Settings
        from pydicom.uid import ExplicitVRLittleEndian
        path = Path({str(path)!r})
        settings = Settings(data_dir=path.parent)
        """,
        """
        header = _read_header(path, 1024)
        _check_pixel_data(header, ExplicitVRLittleEndian, settings, path)
        result = int(header.Rows)
        """,
    )
    assert measured["result"] == "7000"
    assert measured["rise_mb"] < 32


def test_a_corrupt_or_cut_deflate_stream_cannot_be_understood(scp: RunningScp) -> None:
    honest = small_cr()
    wire = bombs.deflate(bombs.encode(honest))
    assert _store(scp, honest, wire[: len(wire) // 2], DeflatedExplicitVRLittleEndian) == 0xC000
    assert "ends before its deflate stream" in _rejection(scp)


def test_the_worker_reads_deflated_sources_within_the_limit(tmp_path: Path) -> None:
    honest = small_cr()
    path = tmp_path / "honest.dcm"
    path.write_bytes(
        bombs.part10(bombs.deflate(bombs.encode(honest)), honest, DeflatedExplicitVRLittleEndian)
    )
    source = read_source(path, Settings(data_dir=tmp_path))
    assert source.PixelData == honest.PixelData
    assert source.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert np.array_equal(decoded_pixels(source), honest.pixel_array)
    bomb = _deflated_file(tmp_path, 16)
    with pytest.raises(PipelineError, match="inflates to more than max_instance_mb=8; not read"):
        read_source(bomb, Settings(data_dir=tmp_path, max_instance_mb=8))


def test_the_inflating_reader_steps_back_only_within_its_window() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    stream = InflatingReader(io.BytesIO(bombs.deflate(data)), 2 * MIB)
    assert stream.read(10) == data[:10]
    stream.seek(600_000)
    assert stream.read(4) == data[600_000:600_004]
    stream.seek(-4, 1)  # pydicom rewinds a few bytes
    assert stream.read(4) == data[600_000:600_004]
    with pytest.raises(OSError):
        stream.seek(0)
    stream.seek(MIB + 100)
    assert stream.read(8) == b""  # past the end, as a file
    with pytest.raises(InflateLimitExceeded):
        stream.read(MIB)  # a value said to end past the limit: not even inflated
    capped = InflatingReader(io.BytesIO(bombs.deflate(data)), 100_000)
    with pytest.raises(InflateLimitExceeded):
        capped.read(10)  # the first chunk inflated crosses the limit


def test_read_part10_keeps_the_file_meta_of_a_deflated_file(tmp_path: Path) -> None:
    honest = small_cr()
    path = tmp_path / "honest.dcm"
    path.write_bytes(
        bombs.part10(bombs.deflate(bombs.encode(honest)), honest, DeflatedExplicitVRLittleEndian)
    )
    header = read_part10(path, MIB, defer_size=1024)
    assert header.file_meta.MediaStorageSOPInstanceUID == honest.SOPInstanceUID
    assert header.get_item("PixelData", keep_deferred=True).value is None  # deferred
    native = tmp_path / "native.dcm"
    honest.save_as(native, enforce_file_format=True)
    assert read_part10(native, 1).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


# -- STOW-RS: the same filing ------------------------------------------------------------------


def test_stow_rs_refuses_the_bombs_with_their_reasons(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        port=free_port(),
        dicomweb_port=free_port(),
        fsync=False,
        min_free_disk_mb=0,
        max_instance_mb=8,
    )
    (settings.data_dir / "quarantine").mkdir(parents=True)
    joblog = JobLog.open(settings.database_path)
    server = StowServer(
        Intake(settings, joblog.intake, Metrics(), lambda outcome, key: None), stow_accepted()
    )
    server.start()
    try:
        jpeg = bombs.jpeg_bomb(30000, 30000)
        header, wire = bombs.deflate_bomb(64)
        parts = [
            bombs.part10(jpeg, jpeg, JPEGBaseline8Bit),
            bombs.part10(wire, header, DeflatedExplicitVRLittleEndian),
        ]
        body = b"".join(
            b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n" for part in parts
        )
        response = requests.post(
            f"http://127.0.0.1:{settings.dicomweb_port}/dicom-web/studies",
            data=body + b"--XyZ--\r\n",
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=XyZ'},
            timeout=60,
        )
    finally:
        server.stop()
    assert response.status_code == 409  # every part failed (PS3.18 10.5.3)
    failed = Dataset.from_json(response.json()).FailedSOPSequence
    assert [int(item.FailureReason) for item in failed] == [
        DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        DicomStatus.OUT_OF_RESOURCES,
    ]
    reasons = " | ".join(row.error or "" for row in joblog.admin.job_rows())
    joblog.close()
    assert "JPEG frame header describes 30000x30000" in reasons
    assert "inflates to more than max_instance_mb=8" in reasons

"""Seeded mutations of valid CR/DX/CT datasets for the fuzz suite (``tests/fuzz``).

A *case* is what one mutation makes of one template: one or more C-STORE *items* (the
encoded data set bytes as they go on the wire, plus what the request says about them).
Everything is derived from ``(run seed, case index)``: ``make_case(templates, seed, index)``
rebuilds the same bytes, UIDs and patient values every time, so a failing case is named by
its seed, index and mutation and can be replayed alone::

    .venv/bin/python -m tests.support.mutations --seed 1234 --case 17 --describe
    .venv/bin/python -m tests.support.mutations --seed 1234 --case 17 --send 127.0.0.1:11112

Data sets are encoded element by element (``Encoded``), so byte-level mutations (flips,
truncations, absurd lengths, wrong VRs, elements inserted out of place) act on real
encodings without a hand-written parser.  Patient values are unique markers
(``ZQXPN<index>``, ``ZQXID<index>``, birth date ``PLANTED_BIRTH_DATE``) that the tests look
for in the node's log and job log.
"""

from __future__ import annotations

import argparse
import copy
import random
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLossless,
    RLELossless,
    generate_uid,
)

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
STORAGE_CLASSES = (CR_STORAGE, DX_PRESENTATION, DX_PROCESSING, CT_STORAGE, ENHANCED_CT)
UNSUPPORTED_CLASSES = (MR_STORAGE, SC_STORAGE)
# Transfer syntaxes the fuzzer proposes, each in a context of its own (per SOP class).
PROPOSED_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEG2000,
    RLELossless,
    ExplicitVRBigEndian,  # not accepted by the node
)

PLANTED_BIRTH_DATE = "18230917"
# Malformed patient values (as some modalities send them): a validator that quotes the value
# in a warning would put them in the log.
MALFORMED_BIRTH_DATES = ("1823-09-17", "17.09.1823", "1823/09/17", "18230917\n", "18230917 ")
PATIENT_AGE_PREFIX = "ZQXAGE"
PATIENT_NAME_PREFIX = "ZQXPN"
PATIENT_ID_PREFIX = "ZQXID"
# Follows a planted line break: must never start a line of the node's log.
INJECTED = "INJECTEDLINE"

TYPE2_ATTRIBUTES = (
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "StudyDate",
    "StudyTime",
)
NON_CHEST_PARTS = ("HAND", "KNEE", "SKULL", "FOOT", "PELVIS", "ELBOW")
CT_SLICES = 24
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_ALL_VRS = (
    "AE",
    "AS",
    "AT",
    "CS",
    "DA",
    "DS",
    "DT",
    "FD",
    "FL",
    "IS",
    "LO",
    "LT",
    "OB",
    "OD",
    "OF",
    "OL",
    "OV",
    "OW",
    "PN",
    "SH",
    "SL",
    "SQ",
    "SS",
    "ST",
    "SV",
    "TM",
    "UC",
    "UI",
    "UL",
    "UN",
    "UR",
    "US",
    "UT",
    "UV",
)


# -- element-level encoding ------------------------------------------------------------------


def tag_of(keyword_or_tag: str | int) -> int:
    if isinstance(keyword_or_tag, int):
        return keyword_or_tag
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword_or_tag)
    if tag is None:
        raise KeyError(keyword_or_tag)
    return int(tag)


def element_header(
    tag: int, vr: str, length: int, implicit: bool, long_form: bool | None = None
) -> bytes:
    """The header of one element: tag, (VR,) length; ``length`` is written as given (mod 2^n)."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<I", length & 0xFFFFFFFF)
    long_form = vr in _LONG_VRS if long_form is None else long_form
    code = vr.encode("latin-1")[:2].ljust(2, b" ")
    if long_form:
        return head + code + b"\0\0" + struct.pack("<I", length & 0xFFFFFFFF)
    return head + code + struct.pack("<H", length & 0xFFFF)


def raw_element(tag: int, vr: str, value: bytes, implicit: bool, pad: bool = True) -> bytes:
    """One element with exactly ``value`` (padded to even length unless ``pad`` is false)."""
    if pad and len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "UN") else b" "
    return element_header(tag, vr, len(value), implicit) + value


@dataclass
class Chunk:
    """One top-level element as encoded: its tag, the header length and the whole bytes."""

    tag: int
    data: bytes
    header: int

    @property
    def value(self) -> bytes:
        return self.data[self.header :]


@dataclass
class Encoded:
    """A data set as a list of encoded top-level elements (ascending tags unless mutated)."""

    chunks: list[Chunk]
    implicit: bool

    @classmethod
    def from_dataset(cls, dataset: Dataset, implicit: bool) -> Encoded:
        dataset = copy.copy(dataset)
        correct_ambiguous_vr(dataset, True)
        chunks = []
        for element in dataset:
            fp = DicomBytesIO()
            fp.is_little_endian = True
            fp.is_implicit_VR = implicit
            write_data_element(fp, element)
            data = fp.getvalue()
            header = 8 if implicit or element.VR not in _LONG_VRS else 12
            if implicit:
                header = 8
            chunks.append(Chunk(int(element.tag), data, header))
        return cls(chunks, implicit)

    def index(self, tag: int) -> int | None:
        for i, chunk in enumerate(self.chunks):
            if chunk.tag == tag:
                return i
        return None

    def get(self, keyword_or_tag: str | int) -> Chunk | None:
        i = self.index(tag_of(keyword_or_tag))
        return None if i is None else self.chunks[i]

    def put_raw(self, tag: int, data: bytes, header: int) -> None:
        """Replace the element ``tag`` (or insert it in tag order) with raw bytes."""
        chunk = Chunk(tag, data, header)
        i = self.index(tag)
        if i is not None:
            self.chunks[i] = chunk
            return
        for i, other in enumerate(self.chunks):
            if other.tag > tag:
                self.chunks.insert(i, chunk)
                return
        self.chunks.append(chunk)

    def put(self, keyword_or_tag: str | int, vr: str, value: bytes | str, pad: bool = True) -> None:
        tag = tag_of(keyword_or_tag)
        raw = value.encode("latin-1") if isinstance(value, str) else value
        data = raw_element(tag, vr, raw, self.implicit, pad)
        header = 8 if self.implicit or vr not in _LONG_VRS else 12
        self.put_raw(tag, data, header)

    def put_us(self, keyword: str, *values: int) -> None:
        self.put(keyword, "US", b"".join(struct.pack("<H", v & 0xFFFF) for v in values))

    def remove(self, keyword_or_tag: str | int) -> None:
        i = self.index(tag_of(keyword_or_tag))
        if i is not None:
            del self.chunks[i]

    def tobytes(self) -> bytes:
        return b"".join(chunk.data for chunk in self.chunks)

    def header_end(self) -> int:
        """Offset of the Pixel Data element (the end of the "header" part)."""
        offset = 0
        for chunk in self.chunks:
            if chunk.tag == 0x7FE00010:
                return offset
            offset += len(chunk.data)
        return offset


def encode_dataset(dataset: Dataset, transfer_syntax: str) -> bytes:
    """The data set as it goes on the wire in ``transfer_syntax`` (native pixel data)."""
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        raw = Encoded.from_dataset(dataset, implicit=False).tobytes()
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return compressor.compress(raw) + compressor.flush()
    implicit = transfer_syntax == ImplicitVRLittleEndian
    return Encoded.from_dataset(dataset, implicit=implicit).tobytes()


# -- what a case sends -----------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One C-STORE: the context to use, the request's UIDs and the encoded data set."""

    context_sop_class: str
    transfer_syntax: str
    affected_sop_instance: str
    payload: bytes
    # What the data set says (None where the mutation made it unknowable or invalid).
    study_uid: str | None
    sop_uid: str | None
    affected_sop_class: str | None = None  # None: the context's SOP class
    defer: int = 0  # send this many associations later than the rest of the case
    label: str = ""
    mutated: bool = False  # False for the untouched slices of a CT case and for controls


def dataset_item(dataset: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> Item:
    """A valid data set as an ``Item`` (for tests that send well-formed instances)."""
    return Item(
        context_sop_class=str(dataset.SOPClassUID),
        transfer_syntax=transfer_syntax,
        affected_sop_instance=str(dataset.SOPInstanceUID),
        payload=encode_dataset(dataset, transfer_syntax),
        study_uid=str(dataset.StudyInstanceUID),
        sop_uid=str(dataset.SOPInstanceUID),
    )


@dataclass
class Case:
    seed: int
    index: int
    mutation: str
    kind: str  # CR, DX or CT (the template)
    chest: bool  # routed to a pipeline when the node accepts it
    detail: str = ""
    items: list[Item] = field(default_factory=list)
    # A valid data set (e.g. only Type 2 attributes missing): must be accepted and end "done".
    expect_done: bool = False
    # The bytes were damaged below the element level: values of one element may have swallowed
    # the next ones (a description may then hold a patient marker without the node knowing).
    byte_level: bool = False

    @property
    def name(self) -> str:
        return f"seed={self.seed} case={self.index} mutation={self.mutation} ({self.detail})"

    @property
    def patient_name(self) -> str:
        return f"{PATIENT_NAME_PREFIX}{self.index:05d}^FUZZ"

    @property
    def patient_id(self) -> str:
        return f"{PATIENT_ID_PREFIX}{self.index:05d}"


@dataclass(frozen=True)
class Templates:
    """Valid, small data sets the mutations start from."""

    cr: Dataset
    dx: Dataset
    ct: tuple[Dataset, ...]  # one axial series of CT_SLICES slices (synthetic phantom)


def build_templates(workdir: Path) -> Templates:
    """pydicom-data's chest CR cut down to 64 x 48, a DX made of it, a 48 px CT phantom series."""
    import pydicom

    from tests.support.factories import small_cr
    from tests.support.synthetic.writer import write_phantom_series

    cr = small_cr()
    dx = copy.deepcopy(cr)
    dx.SOPClassUID = DX_PRESENTATION
    dx.file_meta.MediaStorageSOPClassUID = UID(DX_PRESENTATION)
    dx.Modality = "DX"
    dx.PresentationIntentType = "FOR PRESENTATION"
    dx.ImageType = ["ORIGINAL", "PRIMARY"]
    dx.PixelIntensityRelationship = "LOG"
    dx.PixelIntensityRelationshipSign = 1
    dx.ImagerPixelSpacing = [0.5, 0.5]
    dx.PresentationLUTShape = "INVERSE"
    dx.BurnedInAnnotation = "NO"
    series = write_phantom_series(
        workdir / "ct-template", n_slices=CT_SLICES, size=48, seed=3, slice_spacing=8.0
    )
    ct = tuple(pydicom.dcmread(path) for path in sorted(series.files))
    return Templates(cr, dx, ct)


# -- case generation ---------------------------------------------------------------------------


class Ctx:
    """What a mutation works on: the case, its rng, the datasets (before encoding)."""

    def __init__(self, case: Case, rng: random.Random, datasets: list[Dataset], ts: str) -> None:
        self.case = case
        self.rng = rng
        self.datasets = datasets
        self.transfer_syntax = ts
        self.context_sop_class = str(datasets[0].SOPClassUID)
        # Index of the slice (data set) that byte-level mutations damage.
        self.target = rng.randrange(len(datasets))
        # Data sets changed before encoding (``items`` marks them mutated).
        self.touched: set[int] = set()

    def touch_all(self) -> None:
        self.touched = set(range(len(self.datasets)))

    def uid(self, *parts: object) -> str:
        return uid_for(self.case.seed, self.case.index, *parts)

    def items(
        self,
        mutate: Callable[[Encoded], None] | None = None,
        only_target: bool = True,
        study_uid: str | bool | None = True,
        sop_uid: str | bool | None = True,
    ) -> list[Item]:
        """Encode every data set; ``mutate`` the target's (or every) encoding."""
        out = []
        for i, ds in enumerate(self.datasets):
            implicit = self.transfer_syntax == ImplicitVRLittleEndian
            encoded = Encoded.from_dataset(ds, implicit=implicit)
            hit = mutate is not None and (i == self.target or not only_target)
            if mutate is not None and hit:
                mutate(encoded)
            payload = encoded.tobytes()
            if self.transfer_syntax == DeflatedExplicitVRLittleEndian:
                compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
                payload = compressor.compress(payload) + compressor.flush()
            sop = str(ds.SOPInstanceUID)
            out.append(
                Item(
                    context_sop_class=self.context_sop_class,
                    transfer_syntax=self.transfer_syntax,
                    affected_sop_instance=sop,
                    payload=payload,
                    study_uid=_pick(study_uid, str(ds.StudyInstanceUID), hit),
                    sop_uid=_pick(sop_uid, sop, hit),
                    label=f"{self.case.kind} #{i}" + (" (mutated)" if hit else ""),
                    mutated=hit or i in self.touched,
                )
            )
        return out


def _pick(flag: str | bool | None, actual: str, hit: bool) -> str | None:
    if not hit or flag is True:
        return actual
    if flag is False:
        return None
    return flag


def uid_for(seed: int, index: int, *parts: object) -> str:
    return str(
        generate_uid(entropy_srcs=["dicom-node-fuzz", str(seed), str(index), *map(str, parts)])
    )


Mutation = Callable[[Ctx], None]
MUTATIONS: dict[str, tuple[float, Mutation]] = {}


def mutation(name: str, weight: float) -> Callable[[Mutation], Mutation]:
    def register(fn: Mutation) -> Mutation:
        MUTATIONS[name] = (weight, fn)
        return fn

    return register


def make_case(templates: Templates, seed: int, index: int) -> Case:
    """Case ``index`` of the run seeded ``seed`` (deterministic)."""
    rng = random.Random(f"dicom-node-fuzz/{seed}/{index}")
    names = sorted(MUTATIONS)
    name = rng.choices(names, weights=[MUTATIONS[n][0] for n in names])[0]
    kind = rng.choices(["CR", "DX", "CT"], weights=[0.64, 0.33, 0.03])[0]
    chest = rng.random() < (0.5 if kind == "CT" else 0.3)
    case = Case(seed, index, name, kind, chest)
    datasets = _fresh(templates, case, rng)
    ts = rng.choices([ExplicitVRLittleEndian, ImplicitVRLittleEndian], weights=[0.7, 0.3])[0]
    ctx = Ctx(case, rng, datasets, ts)
    MUTATIONS[name][1](ctx)
    if not case.items:
        case.items = ctx.items()
    return case


def make_cases(templates: Templates, seed: int, min_mutated: int) -> list[Case]:
    """Cases 0, 1, ... until they hold ``min_mutated`` mutated data sets."""
    cases: list[Case] = []
    total = 0
    while total < min_mutated:
        case = make_case(templates, seed, len(cases))
        cases.append(case)
        total += sum(item.mutated for item in case.items)
    return cases


def _fresh(templates: Templates, case: Case, rng: random.Random) -> list[Dataset]:
    """The case's template(s) with new UIDs, planted patient values and its body part."""
    sources: Sequence[Dataset]
    if case.kind == "CT":
        sources = templates.ct
    else:
        sources = [templates.cr if case.kind == "CR" else templates.dx]
    study = uid_for(case.seed, case.index, "study")
    series = uid_for(case.seed, case.index, "series")
    part = "CHEST" if case.chest else rng.choice(NON_CHEST_PARTS)
    out = []
    for i, source in enumerate(sources):
        ds = copy.deepcopy(source)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = uid_for(case.seed, case.index, "sop", i)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName = case.patient_name
        ds.PatientID = case.patient_id
        ds.PatientBirthDate = PLANTED_BIRTH_DATE
        ds.BodyPartExamined = part
        out.append(ds)
    return out


# -- the mutations -----------------------------------------------------------------------------


@mutation("control", 4)
def _control(ctx: Ctx) -> None:
    """No mutation: the harness's own check (a valid chest study must end done)."""
    ctx.case.expect_done = ctx.case.chest
    ctx.case.detail = "unchanged"


@mutation("type2_missing", 5)
def _type2_missing(ctx: Ctx) -> None:
    names = [n for n in TYPE2_ATTRIBUTES if ctx.rng.random() < 0.6] or list(TYPE2_ATTRIBUTES)
    for ds in ctx.datasets:
        for keyword in names:
            if keyword in ds:
                delattr(ds, keyword)
    ctx.touch_all()
    ctx.case.detail = "without " + ",".join(names)
    ctx.case.expect_done = ctx.case.chest


@mutation("type2_empty", 2)
def _type2_empty(ctx: Ctx) -> None:
    for ds in ctx.datasets:
        for keyword in TYPE2_ATTRIBUTES:
            setattr(ds, keyword, "")
    ctx.touch_all()
    ctx.case.detail = "Type 2 attributes present and empty"
    ctx.case.expect_done = ctx.case.chest


@mutation("duplicate_resend", 1.5)
def _duplicate_resend(ctx: Ctx) -> None:
    items = ctx.items()
    again = [replace(items[ctx.target], defer=ctx.rng.choice([0, 1]), label="resent", mutated=True)]
    ctx.case.items = items + again
    ctx.case.detail = f"instance #{ctx.target} sent twice"
    ctx.case.expect_done = ctx.case.chest


BAD_UIDS: tuple[str, ...] = (
    "../../../../fuzz-escape",
    "..",
    "/",
    "/etc/passwd",
    "1.2.3/../../4",
    "1.2.3\\4",
    "..\\..\\fuzz-escape",
    "C:\\fuzz",
    "1.2.3.",
    ".1.2.3",
    "1..2.3",
    "01.2.3",
    "1.2.03",
    "1.2.abc",
    "1.2.3-4",
    "1.2.3 4",
    "",
    "1." + "2" * 64,
    "1.2.3\n4",
    "1.2.3\r\n" + INJECTED,
    "1.2.\x1b[2J3",
    "1.2.3\x00.4",
    "1.2.\xef\xbc\x93",  # UTF-8 of a full-width digit
    "%2e%2e%2f%2e%2e%2f",
)


def _long_uid(rng: random.Random) -> str:
    base = "1.2.826.0.1.3680043.8.498."
    return base + "".join(
        rng.choice("0123456789") for _ in range(65 - len(base) + rng.randrange(30))
    )


@mutation("uid_malformed", 7)
def _uid_malformed(ctx: Ctx) -> None:
    rng = ctx.rng
    keyword = rng.choice(["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
    # A patient ID where a UID belongs: it must reach no log line (the node's or pynetdicom's).
    bad = rng.choice([*BAD_UIDS, _long_uid(rng), ctx.case.patient_id])
    where = rng.choice(["dataset", "both", "request"]) if keyword == "SOPInstanceUID" else "dataset"
    ctx.case.detail = f"{keyword}={bad!r} in {where}"
    target = ctx.datasets[ctx.target]
    good_sop = str(target.SOPInstanceUID)

    def mutate(encoded: Encoded) -> None:
        if where != "request":
            encoded.put(keyword, "UI", bad.encode("latin-1", "replace"))

    items = ctx.items(
        mutate,
        study_uid=keyword != "StudyInstanceUID",
        sop_uid=not (keyword == "SOPInstanceUID" and where != "request"),
    )
    if where in ("both", "request"):
        items[ctx.target] = replace(items[ctx.target], affected_sop_instance=bad, mutated=True)
    elif keyword == "SOPInstanceUID":
        items[ctx.target] = replace(items[ctx.target], affected_sop_instance=good_sop)
    ctx.case.items = items


@mutation("control_chars", 5)
def _control_chars(ctx: Ctx) -> None:
    """Line breaks and control characters in Modality, PatientName or a UID."""
    rng = ctx.rng
    field_name = rng.choice(["Modality", "Modality", "PatientName", "SeriesInstanceUID"])
    modality = str(ctx.datasets[0].Modality)
    values = {
        "Modality": [
            f"{modality}\n{INJECTED}",
            f"{modality}\r\n{INJECTED} x",
            f"{modality}\r{INJECTED}",
            f"{modality[0]}\x00{modality[1]}",
            f"\x1b[31m{modality}",
            f"{modality}\x7f",
            f"{modality}\t",
            f"{modality}\x0b\x0c",
            f"{modality}\\{modality}",
            modality.lower(),
        ],
        "PatientName": [
            f"{ctx.case.patient_name}\n{INJECTED}",
            f"{ctx.case.patient_name}\r\n{INJECTED}",
            f"\x1b[2J{ctx.case.patient_name}",
            f"{ctx.case.patient_name}\x00tail",
        ],
        "SeriesInstanceUID": [
            f"{ctx.datasets[0].SeriesInstanceUID}\n{INJECTED}",
            f"1.2.3\r\n{INJECTED}",
            "1.2.3\x00",  # trailing NUL padding is valid
        ],
    }[field_name]
    value = rng.choice(values)
    vr = {"Modality": "CS", "PatientName": "PN", "SeriesInstanceUID": "UI"}[field_name]
    everywhere = field_name != "SeriesInstanceUID" or rng.random() < 0.5
    ctx.case.detail = f"{field_name}={value!r}" + (" in every slice" if everywhere else "")
    ctx.case.items = ctx.items(
        lambda e: e.put(field_name, vr, value.encode("latin-1")), only_target=not everywhere
    )


@mutation("long_string", 5)
def _long_string(ctx: Ctx) -> None:
    rng = ctx.rng
    keyword, vr = rng.choice(
        [
            ("StudyDescription", "LO"),
            ("SeriesDescription", "LO"),
            ("ProtocolName", "LO"),
            ("BodyPartExamined", "CS"),
            ("Modality", "CS"),
            ("InstitutionName", "LO"),
            ("StationName", "SH"),
            ("ImageType", "CS"),
            ("Manufacturer", "LO"),
            ("AccessionNumber", "SH"),
            ("PatientName", "PN"),
            ("StudyID", "SH"),
        ]
    )
    size = rng.choice([8 * 1024, 8 * 1024 + 1, 16 * 1024, 60 * 1024])
    unit = rng.choice(["FUZZLONG ", "FUZZ\\LONG\\", "CHEST ", "\xe9t\xe9 ", "\xff\xfe"])
    if keyword == "PatientName":
        unit = ctx.case.patient_name + " "
    value = (unit * (size // len(unit) + 1))[:size]
    ctx.case.detail = f"{keyword} of {size} bytes ({unit.strip()!r}...)"
    ctx.case.items = ctx.items(lambda e: e.put(keyword, vr, value.encode("latin-1"), pad=False))


PIXEL_EDITS: tuple[tuple[str, Callable[[Encoded, Dataset], None]], ...] = (
    ("Rows*2", lambda e, d: e.put_us("Rows", int(d.Rows) * 2)),
    ("Rows/2", lambda e, d: e.put_us("Rows", int(d.Rows) // 2)),
    ("Rows=0", lambda e, d: e.put_us("Rows", 0)),
    ("Rows=65535", lambda e, d: e.put_us("Rows", 65535)),
    ("Rows=2 values", lambda e, d: e.put_us("Rows", int(d.Rows), int(d.Rows))),
    ("Rows missing", lambda e, d: e.remove("Rows")),
    ("Columns+1", lambda e, d: e.put_us("Columns", int(d.Columns) + 1)),
    ("Columns=0", lambda e, d: e.put_us("Columns", 0)),
    ("Columns=65535", lambda e, d: e.put_us("Columns", 65535)),
    ("BitsAllocated=8", lambda e, d: e.put_us("BitsAllocated", 8)),
    ("BitsAllocated=32", lambda e, d: e.put_us("BitsAllocated", 32)),
    ("BitsAllocated=1", lambda e, d: e.put_us("BitsAllocated", 1)),
    ("BitsAllocated=12", lambda e, d: e.put_us("BitsAllocated", 12)),
    ("BitsAllocated=0", lambda e, d: e.put_us("BitsAllocated", 0)),
    ("BitsAllocated=64", lambda e, d: e.put_us("BitsAllocated", 64)),
    ("BitsAllocated missing", lambda e, d: e.remove("BitsAllocated")),
    ("BitsStored=17", lambda e, d: e.put_us("BitsStored", 17)),
    ("BitsStored=0", lambda e, d: e.put_us("BitsStored", 0)),
    ("HighBit=31", lambda e, d: e.put_us("HighBit", 31)),
    ("SamplesPerPixel=3", lambda e, d: e.put_us("SamplesPerPixel", 3)),
    ("SamplesPerPixel=0", lambda e, d: e.put_us("SamplesPerPixel", 0)),
    ("SamplesPerPixel=3 planar", lambda e, d: _rgb(e)),
    ("PhotometricInterpretation=RGB", lambda e, d: e.put("PhotometricInterpretation", "CS", "RGB")),
    (
        "PhotometricInterpretation=PALETTE COLOR",
        lambda e, d: e.put("PhotometricInterpretation", "CS", "PALETTE COLOR"),
    ),
    ("PhotometricInterpretation empty", lambda e, d: e.put("PhotometricInterpretation", "CS", "")),
    (
        "PhotometricInterpretation=YBR",
        lambda e, d: e.put("PhotometricInterpretation", "CS", "YBR_FULL"),
    ),
    ("PixelRepresentation=1", lambda e, d: e.put_us("PixelRepresentation", 1)),
    ("PixelRepresentation=7", lambda e, d: e.put_us("PixelRepresentation", 7)),
    ("NumberOfFrames=0", lambda e, d: e.put("NumberOfFrames", "IS", "0")),
    ("NumberOfFrames=-1", lambda e, d: e.put("NumberOfFrames", "IS", "-1")),
    ("NumberOfFrames=2", lambda e, d: e.put("NumberOfFrames", "IS", "2")),
    ("NumberOfFrames=abc", lambda e, d: e.put("NumberOfFrames", "IS", "abc")),
    ("NumberOfFrames=2147483647", lambda e, d: e.put("NumberOfFrames", "IS", "2147483647")),
    ("RescaleSlope=0", lambda e, d: e.put("RescaleSlope", "DS", "0")),
    ("RescaleSlope=nan", lambda e, d: e.put("RescaleSlope", "DS", "NaN")),
    ("WindowWidth=0", lambda e, d: e.put("WindowWidth", "DS", "0")),
    ("WindowCenter=abc", lambda e, d: e.put("WindowCenter", "DS", "abc")),
    ("PixelSpacing=0\\0", lambda e, d: e.put("PixelSpacing", "DS", "0\\0")),
    ("PixelSpacing=-1", lambda e, d: e.put("PixelSpacing", "DS", "-1\\-1")),
)


def _rgb(encoded: Encoded) -> None:
    encoded.put_us("SamplesPerPixel", 3)
    encoded.put("PhotometricInterpretation", "CS", "RGB")
    encoded.put_us("PlanarConfiguration", 1)


@mutation("pixel_description", 8)
def _pixel_description(ctx: Ctx) -> None:
    """Rows/Columns/BitsAllocated/SamplesPerPixel... that disagree with the pixel data."""
    edits = ctx.rng.sample(PIXEL_EDITS, ctx.rng.choice([1, 1, 2]))
    target = ctx.datasets[ctx.target]
    ctx.case.detail = ", ".join(name for name, _ in edits)

    def mutate(encoded: Encoded) -> None:
        for _, edit in edits:
            edit(encoded, target)

    ctx.case.items = ctx.items(mutate)


@mutation("pixel_length", 6)
def _pixel_length(ctx: Ctx) -> None:
    """Short, long, empty, odd or missing pixel data."""
    target = ctx.datasets[ctx.target]
    pixels = bytes(target.PixelData)
    variants: list[tuple[str, Callable[[Encoded], None]]] = [
        ("empty", lambda e: e.put("PixelData", "OW", b"")),
        ("1 byte", lambda e: e.put("PixelData", "OW", b"\x01", pad=False)),
        ("half", lambda e: e.put("PixelData", "OW", pixels[: len(pixels) // 2])),
        ("one byte short", lambda e: e.put("PixelData", "OW", pixels[:-1], pad=False)),
        ("two bytes short", lambda e: e.put("PixelData", "OW", pixels[:-2])),
        ("one byte long", lambda e: e.put("PixelData", "OW", pixels + b"\x07", pad=False)),
        ("double", lambda e: e.put("PixelData", "OW", pixels * 2)),
        ("1 MB extra", lambda e: e.put("PixelData", "OW", pixels + bytes(1 << 20))),
        ("missing", lambda e: e.remove("PixelData")),
        ("as OB", lambda e: e.put("PixelData", "OB", pixels)),
        ("as Float Pixel Data", lambda e: _float_pixels(e, pixels)),
        ("undefined length", lambda e: _undefined_pixels(e, pixels)),
    ]
    name, mutate = ctx.rng.choice(variants)
    ctx.case.detail = f"pixel data {name}"
    ctx.case.items = ctx.items(mutate)


def _float_pixels(encoded: Encoded, pixels: bytes) -> None:
    encoded.remove("PixelData")
    encoded.put(0x7FE00008, "OF", pixels)


def _undefined_pixels(encoded: Encoded, pixels: bytes) -> None:
    """Native pixel data with an undefined length and fake items (encapsulated on a native TS)."""
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0) + struct.pack("<HHI", 0xFFFE, 0xE000, len(pixels))
    data = (
        element_header(0x7FE00010, "OB", 0xFFFFFFFF, encoded.implicit)
        + item
        + pixels
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )
    encoded.put_raw(0x7FE00010, data, 12)


@mutation("group2_in_dataset", 4)
def _group2(ctx: Ctx) -> None:
    rng = ctx.rng
    claimed = rng.choice(
        [
            ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian,
            JPEGBaseline8Bit,
            ImplicitVRLittleEndian,
            ExplicitVRLittleEndian,
            "1.2.3.4.5",
            "../../x",
        ]
    )
    extra = rng.sample(
        ["version", "group length", "media class", "media instance"], rng.randrange(3)
    )
    ctx.case.detail = f"(0002,0010)={claimed} in the data set" + (
        f" + {', '.join(extra)}" if extra else ""
    )

    def mutate(encoded: Encoded) -> None:
        encoded.put(0x00020010, "UI", claimed.encode())
        if "version" in extra:
            encoded.put(0x00020001, "OB", b"\x00\x01")
        if "group length" in extra:
            encoded.put(0x00020000, "UL", struct.pack("<I", rng.choice([0, 7, 0xFFFFFFFF])))
        if "media class" in extra:
            encoded.put(0x00020002, "UI", MR_STORAGE.encode())
        if "media instance" in extra:
            encoded.put(0x00020003, "UI", ctx.uid("media").encode())

    ctx.case.items = ctx.items(mutate)


@mutation("transfer_syntax", 5)
def _transfer_syntax(ctx: Ctx) -> None:
    """Unsupported syntaxes, native bytes labelled compressed, wrong/right deflate."""
    rng = ctx.rng
    variant = rng.choice(
        [
            "big endian",
            "native labelled JPEG baseline",
            "native labelled JPEG lossless",
            "native labelled JPEG 2000",
            "native labelled RLE",
            "deflated label, raw bytes",
            "deflated properly",
            "implicit bytes on explicit",
            "explicit bytes on implicit",
            "RLE properly",
        ]
    )
    ctx.case.detail = variant
    if variant == "big endian":
        ctx.transfer_syntax = ExplicitVRBigEndian
        ctx.touch_all()
        ctx.case.items = ctx.items()
        return
    if variant == "deflated properly":
        ctx.transfer_syntax = DeflatedExplicitVRLittleEndian
        ctx.touch_all()
        ctx.case.items = ctx.items()
        ctx.case.expect_done = ctx.case.chest
        return
    if variant == "RLE properly":
        for ds in ctx.datasets:
            ds.compress(RLELossless)
        ctx.transfer_syntax = RLELossless
        ctx.touch_all()
        items = ctx.items()
        ctx.case.items = items
        ctx.case.expect_done = ctx.case.chest
        return
    labels = {
        "native labelled JPEG baseline": JPEGBaseline8Bit,
        "native labelled JPEG lossless": JPEGLossless,
        "native labelled JPEG 2000": JPEG2000,
        "native labelled RLE": RLELossless,
        "deflated label, raw bytes": DeflatedExplicitVRLittleEndian,
        "implicit bytes on explicit": ExplicitVRLittleEndian,
        "explicit bytes on implicit": ImplicitVRLittleEndian,
    }
    encode_as = (
        ImplicitVRLittleEndian
        if variant == "implicit bytes on explicit"
        else ExplicitVRLittleEndian
    )
    ctx.transfer_syntax = encode_as
    items = ctx.items()
    target = items[ctx.target]
    items[ctx.target] = replace(target, transfer_syntax=labels[variant], mutated=True)
    ctx.case.items = items


@mutation("sop_class", 4)
def _sop_class(ctx: Ctx) -> None:
    rng = ctx.rng
    variant = rng.choice(
        [
            "MR context",
            "SC context",
            "MR class in the data set",
            "unknown class in the data set",
            "CT request for a radiograph" if ctx.case.kind != "CT" else "CR request for a CT slice",
            "Enhanced CT request",
            "request class differs from context",
        ]
    )
    ctx.case.detail = variant
    items = ctx.items(
        (lambda e: e.put("SOPClassUID", "UI", MR_STORAGE.encode()))
        if variant == "MR class in the data set"
        else (lambda e: e.put("SOPClassUID", "UI", b"1.2.3.4.5.6.7"))
        if variant == "unknown class in the data set"
        else None
    )
    target = items[ctx.target]
    if variant == "MR context":
        target = replace(target, context_sop_class=MR_STORAGE)
    elif variant == "SC context":
        target = replace(target, context_sop_class=SC_STORAGE)
    elif variant.startswith("CT request"):
        target = replace(target, context_sop_class=CT_STORAGE)
    elif variant.startswith("CR request"):
        target = replace(target, context_sop_class=CR_STORAGE)
    elif variant == "Enhanced CT request":
        target = replace(target, context_sop_class=ENHANCED_CT)
    elif variant == "request class differs from context":
        target = replace(target, affected_sop_class=MR_STORAGE)
    items[ctx.target] = replace(target, mutated=True)
    ctx.case.items = items


def deep_sequence(depth: int, implicit: bool) -> bytes:
    """(0008,1140) nested ``depth`` times, undefined lengths (built without recursion)."""
    tag = 0x00081140
    opening = element_header(tag, "SQ", 0xFFFFFFFF, implicit) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    leaf = raw_element(0x00081150, "UI", CR_STORAGE.encode(), implicit)
    return opening * depth + leaf + closing * depth


@mutation("deep_sequence", 3)
def _deep_sequence(ctx: Ctx) -> None:
    depth = ctx.rng.choice([16, 100, 400, 1000, 5000, 20000])
    ctx.case.detail = f"sequence nested {depth} deep"
    ctx.case.items = ctx.items(
        lambda e: e.put_raw(0x00081140, deep_sequence(depth, e.implicit), 12)
    )


@mutation("huge_element", 1.5)
def _huge_element(ctx: Ctx) -> None:
    rng = ctx.rng
    size = rng.choice([2, 4, 6]) << 20
    variant = rng.choice(["private OB", "encapsulated document", "UN text", "big image"])
    ctx.case.detail = f"{variant} of {size >> 20} MB"
    if variant == "big image":
        import numpy as np

        side = 1024 if size <= 2 << 20 else 1448
        for ds in ctx.datasets[ctx.target : ctx.target + 1]:
            small = ds.pixel_array
            big = np.kron(small, np.ones((side // small.shape[0] + 1, side // small.shape[1] + 1)))
            big = big[:side, :side].astype(np.uint16)
            ds.Rows, ds.Columns = big.shape
            ds.PixelData = big.tobytes()
        ctx.case.detail = f"consistent {side}x{side} image ({side * side * 2 >> 20} MB)"
        ctx.touched = {ctx.target}
        ctx.case.items = ctx.items()
        return
    payload = bytes(rng.getrandbits(8) for _ in range(256)) * (size // 256)

    def mutate(encoded: Encoded) -> None:
        if variant == "private OB":
            encoded.put(0x00090010, "LO", b"DICOMNODE FUZZ")
            encoded.put(0x00091010, "OB", payload)
        elif variant == "encapsulated document":
            encoded.put(0x00420011, "OB", payload)
        else:
            encoded.put(0x00204000, "UN", b"FUZZ " * (size // 5))

    ctx.case.items = ctx.items(mutate)


@mutation("absurd_length", 7)
def _absurd_length(ctx: Ctx) -> None:
    rng = ctx.rng
    ctx.case.byte_level = True
    target = ctx.datasets[ctx.target]
    candidates = [e.tag for e in target if e.tag != 0x7FE00010]
    tag = rng.choice([0x7FE00010, *rng.sample(candidates, 3)])
    choice = rng.choice(
        ["0xFFFFFFFF", "0xFFFFFFFE", "0x7FFFFFFF", "0x10000000", "+1", "+2", "-1", "0", "0xFFFF"]
    )
    ctx.case.detail = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) length {choice}"

    def mutate(encoded: Encoded) -> None:
        i = encoded.index(tag)
        if i is None:
            return
        chunk = encoded.chunks[i]
        actual = len(chunk.value)
        new = {"+1": actual + 1, "+2": actual + 2, "-1": max(actual - 1, 0), "0": 0}.get(
            choice, int(choice, 16) if choice.startswith("0x") else 0
        )
        short = chunk.header == 8 and not encoded.implicit
        if short:
            data = chunk.data[:6] + struct.pack("<H", new & 0xFFFF) + chunk.value
        else:
            data = (
                chunk.data[: chunk.header - 4] + struct.pack("<I", new & 0xFFFFFFFF) + chunk.value
            )
        encoded.chunks[i] = Chunk(tag, data, chunk.header)

    ctx.case.items = ctx.items(mutate, study_uid=False, sop_uid=False)


@mutation("wrong_vr", 5)
def _wrong_vr(ctx: Ctx) -> None:
    rng = ctx.rng
    ctx.case.byte_level = True
    interesting = [
        "Rows",
        "Columns",
        "BitsAllocated",
        "SamplesPerPixel",
        "PixelData",
        "StudyInstanceUID",
        "SOPInstanceUID",
        "Modality",
        "BodyPartExamined",
        "ImageType",
        "PixelSpacing",
        "StudyDescription",
        "SOPClassUID",
        "PhotometricInterpretation",
    ]
    keyword = rng.choice(interesting)
    vr = rng.choice([*_ALL_VRS, "ZZ", "\0\0", "ob", "  "])
    ctx.transfer_syntax = ExplicitVRLittleEndian
    ctx.case.detail = f"{keyword} encoded as VR {vr!r}"

    def mutate(encoded: Encoded) -> None:
        chunk = encoded.get(keyword)
        if chunk is None:
            return
        value = chunk.value
        head = element_header(chunk.tag, vr, len(value), False, long_form=vr in _LONG_VRS)
        encoded.put_raw(chunk.tag, head + value, len(head))

    ctx.case.items = ctx.items(mutate, study_uid=False, sop_uid=False)


@mutation("byte_flip", 9)
def _byte_flip(ctx: Ctx) -> None:
    rng = ctx.rng
    ctx.case.byte_level = True
    count = rng.choice([1, 2, 4, 8, 32])
    in_header = rng.random() < 0.7
    ctx.case.detail = f"{count} byte(s) flipped {'in the header' if in_header else 'anywhere'}"
    flip_seed = rng.getrandbits(32)

    def mutate(encoded: Encoded) -> None:
        data = bytearray(encoded.tobytes())
        limit = encoded.header_end() if in_header else len(data)
        local = random.Random(flip_seed)
        for _ in range(count):
            pos = local.randrange(max(limit, 1))
            data[pos] = local.choice([data[pos] ^ (1 << local.randrange(8)), 0x00, 0xFF])
        encoded.chunks = [Chunk(0, bytes(data), 0)]

    ctx.case.items = ctx.items(mutate, study_uid=False, sop_uid=False)


@mutation("truncate", 7)
def _truncate(ctx: Ctx) -> None:
    rng = ctx.rng
    ctx.case.byte_level = True
    where = rng.choice(["header", "header", "pixels", "first bytes"])
    cut_seed = rng.getrandbits(32)
    ctx.case.detail = f"cut in the {where}"

    def mutate(encoded: Encoded) -> None:
        data = encoded.tobytes()
        local = random.Random(cut_seed)
        header_end = encoded.header_end()
        if where == "header":
            cut = local.randrange(max(header_end, 1))
        elif where == "pixels":
            cut = local.randrange(header_end, len(data))
        else:
            cut = local.randrange(1, 17)  # not 0: a C-STORE needs a data set
        encoded.chunks = [Chunk(0, data[:cut], 0)]

    ctx.case.items = ctx.items(mutate, study_uid=False, sop_uid=False)


@mutation("garbage", 1.5)
def _garbage(ctx: Ctx) -> None:
    rng = ctx.rng
    ctx.case.byte_level = True
    # (No empty payload: a C-STORE command without a data set leaves the SCP waiting for it.)
    size = rng.choice([1, 2, 7, 8, 128, 4096])
    blob = bytes(rng.getrandbits(8) for _ in range(size))
    ctx.case.detail = f"{size} random bytes as the data set"

    def mutate(encoded: Encoded) -> None:
        encoded.chunks = [Chunk(0, blob, 0)]

    ctx.case.items = ctx.items(mutate, study_uid=False, sop_uid=False)


@mutation("sop_mismatch", 1.5)
def _sop_mismatch(ctx: Ctx) -> None:
    other = ctx.uid("other sop")
    ctx.case.detail = "request's Affected SOP Instance UID differs from the data set's"
    items = ctx.items()
    items[ctx.target] = replace(items[ctx.target], affected_sop_instance=other, mutated=True)
    ctx.case.items = items


@mutation("reused_sop_uid", 3)
def _reused_sop_uid(ctx: Ctx) -> None:
    """The same SOP Instance UID arrives again in a second study (another patient)."""
    first = ctx.items()
    study_b = ctx.uid("study B")
    series_b = ctx.uid("series B")
    target = ctx.datasets[ctx.target]
    second_ds = copy.deepcopy(target)
    second_ds.StudyInstanceUID = study_b
    second_ds.SeriesInstanceUID = series_b
    second_ds.PatientName = f"{PATIENT_NAME_PREFIX}{ctx.case.index:05d}^SECOND"
    second_ds.PatientID = f"{PATIENT_ID_PREFIX}{ctx.case.index:05d}B"
    defer = ctx.rng.choice([0, 1, 3])
    ctx.case.detail = (
        f"SOP Instance UID of #{ctx.target} sent again in study B {study_b}"
        f" ({defer} association(s) later)"
    )
    implicit = ctx.transfer_syntax == ImplicitVRLittleEndian
    second = Item(
        context_sop_class=ctx.context_sop_class,
        transfer_syntax=ctx.transfer_syntax,
        affected_sop_instance=str(second_ds.SOPInstanceUID),
        payload=Encoded.from_dataset(second_ds, implicit).tobytes(),
        study_uid=study_b,
        sop_uid=str(second_ds.SOPInstanceUID),
        defer=defer,
        label="same SOP Instance UID, second study",
        mutated=True,
    )
    ctx.case.items = [*first, second]


@mutation("patient_values_malformed", 3)
def _patient_values_malformed(ctx: Ctx) -> None:
    """A chest study whose birth date, sex and age are malformed (the pixels are fine)."""
    rng = ctx.rng
    birth = rng.choice(MALFORMED_BIRTH_DATES)
    age = f"{PATIENT_AGE_PREFIX}{ctx.case.index:05d}"
    sex = rng.choice(["X", "male", "m", ""])
    ctx.case.chest = True
    for ds in ctx.datasets:
        ds.BodyPartExamined = "CHEST"
    ctx.case.detail = f"PatientBirthDate={birth!r}, PatientAge={age!r}, PatientSex={sex!r}"

    def mutate(encoded: Encoded) -> None:
        encoded.put("PatientBirthDate", "DA", birth)
        encoded.put("PatientAge", "AS", age)
        encoded.put("PatientSex", "CS", sex)

    ctx.case.items = ctx.items(mutate, only_target=False)


@mutation("private_and_unknown", 1.5)
def _private(ctx: Ctx) -> None:
    rng = ctx.rng
    ctx.case.detail = "private elements without creator, unknown public tags, UN values"

    def mutate(encoded: Encoded) -> None:
        encoded.put(0x00091001, "UN", bytes(rng.getrandbits(8) for _ in range(64)))
        encoded.put(0x00190010, "LO", b"\xff\xfeWEIRD CREATOR")
        encoded.put(0x00191099, "SQ", b"\x01\x02\x03\x04")
        encoded.put(0x00331234, "US", b"\x01")
        encoded.put(0x0008FFFF, "UN", b"unknown public tag")

    ctx.case.items = ctx.items(mutate)


# -- reproduction ------------------------------------------------------------------------------


def describe(case: Case) -> str:
    lines = [case.name, f"  kind={case.kind} chest={case.chest} expect_done={case.expect_done}"]
    for item in case.items:
        lines.append(
            f"  item {item.label}: context {item.context_sop_class} / {item.transfer_syntax}, "
            f"affected SOP {item.affected_sop_instance!r}, {len(item.payload)} bytes, "
            f"study {item.study_uid}, defer {item.defer}"
        )
    return "\n".join(lines)


def write_item(item: Item, path: Path) -> None:
    """The item as a DICOM file: preamble, File Meta Information from the request, the bytes."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(item.affected_sop_class or item.context_sop_class)
    meta.MediaStorageSOPInstanceUID = UID(item.affected_sop_instance)
    meta.TransferSyntaxUID = UID(item.transfer_syntax)
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(fp.getvalue() + item.payload)


def _main(argv: Iterable[str] | None = None) -> None:
    import tempfile

    from tests.support.dicom_client import StoreSession

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--case", type=int, required=True)
    parser.add_argument("--describe", action="store_true")
    parser.add_argument("--send", metavar="HOST:PORT", help="send the case to a node (AINODE)")
    parser.add_argument("--calling-ae", default="FUZZER")
    parser.add_argument("--out", type=Path, help="also write each item as a DICOM file here")
    args = parser.parse_args(list(argv) if argv is not None else None)
    with tempfile.TemporaryDirectory() as tmp:
        case = make_case(build_templates(Path(tmp)), args.seed, args.case)
    print(describe(case))
    if args.out:
        for number, item in enumerate(case.items):
            path = args.out / f"seed{case.seed}-case{case.index}-item{number}.dcm"
            write_item(item, path)
            print(f"  wrote {path}")
    if args.send:
        host, port = args.send.rsplit(":", 1)
        with StoreSession(host, int(port), calling_ae=args.calling_ae) as session:
            for item in case.items:
                outcome = session.store(item)
                print(f"  {item.label}: {outcome.category} ({outcome.seconds:.2f} s)")


if __name__ == "__main__":
    _main()

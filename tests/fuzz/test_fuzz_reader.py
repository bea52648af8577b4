"""Property-based fuzzing of the CT series reader (:func:`worker.series.read_ct_series`).

Every example damages a copy of one small valid synthetic series (6 axial slices of 32 x 32,
written once per module) and reads it. The contract under test: the reader returns a usable
volume or raises :class:`InputError` with a ``series.*``, ``input.*`` or ``file.*`` code. No
other exception may escape, and no example may run longer than :data:`EXAMPLE_TIME_LIMIT_S`
or allocate more than :data:`EXAMPLE_MEMORY_LIMIT_BYTES` (traced by :mod:`tracemalloc`, which
also traces numpy's array buffers).

Hypothesis runs with a fixed seed and without its example database. :mod:`tests.fuzz`
describes what that makes reproducible and the environment variables of longer runs.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import struct
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import event, given, seed, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    RTStructureSetStorage,
    generate_uid,
)

from model.errors import InputError
from tests.fuzz import FUZZ_SETTINGS, GuardedResult, guarded_call, scaled_examples
from worker.series import CTSeries, read_ct_series, scan_files
from worker.synthetic_dicom import Ball, SeriesGeometry, render_phantom, write_ct_series

# Fuzzed headers carry invalid values on purpose, so pydicom's UserWarnings about them and
# numpy's overflow RuntimeWarnings are expected; the assertions check the outcome instead.
pytestmark = [
    pytest.mark.fuzz,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

SLICES, ROWS, COLUMNS = 6, 32, 32

#: Maximum wall time of one read. A valid read of the 6-slice series took about 0.05 s on 2 CPU cores.
EXAMPLE_TIME_LIMIT_S = 5.0

#: Maximum traced allocation peak of one read. A valid read of the 6-slice series peaked at about 0.2 MiB.
EXAMPLE_MEMORY_LIMIT_BYTES = 256 * 1024**2

DOCUMENTED_CODE_PREFIXES = ("series.", "input.", "file.")

# ---------------------------------------------------------------------------------------------
# The valid series
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OriginalSeries:
    """The valid series that every example starts from.

    Attributes
    ----------
    paths
        The slice files; ``paths[k]`` is slice ``k``.
    blobs
        The bytes of each file.
    hu
        ``(D, H, W)`` float32 HU that a correct read returns.
    sop_instance_uids
        SOPInstanceUID of each slice, in slice order.
    """

    paths: list[Path]
    blobs: list[bytes] = field(repr=False)
    hu: np.ndarray = field(repr=False)
    sop_instance_uids: list[str] = field(repr=False)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # Hypothesis prints fixtures of a failing example this way, and the bytes would fill pages.
        printer.text(f"OriginalSeries({len(self.paths)} slices in {self.paths[0].parent})")


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> OriginalSeries:
    geometry = SeriesGeometry.axial(
        "HFS", rows=ROWS, columns=COLUMNS, slices=SLICES, pixel_spacing_mm=(1.0, 1.25), slice_spacing_mm=2.5
    )
    volume = render_phantom(geometry, [Ball((0.0, 0.0, 0.0), 8.0, 300.0)], background_hu=-1000.0, noise_sd_hu=10.0)
    paths = write_ct_series(volume, geometry, tmp_path_factory.mktemp("fuzz-original"), uid_seed="fuzz-reader")
    uids = [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in paths]
    return OriginalSeries(paths, [path.read_bytes() for path in paths], volume.astype(np.float32), uids)


@pytest.fixture(scope="module")
def examples_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parent folder of the per-example folders (function-scoped tmp_path does not reset between examples)."""
    return tmp_path_factory.mktemp("fuzz-examples")


@contextlib.contextmanager
def _example_folder(root: Path, original: OriginalSeries, replacements: dict[int, bytes]) -> Iterator[Path]:
    """Yield a new folder with the series, slice ``k`` replaced by ``replacements[k]``."""
    folder = Path(tempfile.mkdtemp(dir=root))
    try:
        for index, path in enumerate(original.paths):
            (folder / path.name).write_bytes(replacements.get(index, original.blobs[index]))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _read(folder: Path) -> GuardedResult:
    """Run :func:`read_ct_series` on ``folder`` under the time limit, tracing its allocation peak."""
    return guarded_call(read_ct_series, folder, limit_s=EXAMPLE_TIME_LIMIT_S)


# ---------------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------------


def _check_error(error: Exception) -> None:
    if isinstance(error, InputError):
        assert error.code.startswith(DOCUMENTED_CODE_PREFIXES), f"undocumented error code {error.code!r}: {error}"
        assert str(error), f"InputError {error.code} has an empty message"
        event(f"InputError {error.code}")
        return
    raise AssertionError(f"read_ct_series raised {type(error).__name__} instead of InputError: {error}") from error


def _series_problems(series: CTSeries, original: OriginalSeries, mutated: set[int]) -> list[str]:
    """Return a description of each way ``series`` breaks the contract."""
    problems: list[str] = []
    depth, rows, columns = series.hu.shape
    declared = (int(series.datasets[0].Rows), int(series.datasets[0].Columns))
    if depth != len(series.datasets):
        problems.append(f"volume has {depth} slices but {len(series.datasets)} headers")
    if depth < 2:
        problems.append(f"volume has {depth} slices, but a volume needs at least 2")
    if (rows, columns) != declared:
        problems.append(f"volume rows x columns {(rows, columns)} differ from Rows x Columns {declared}")
    if rows == 0 or columns == 0:
        problems.append(f"volume shape {series.hu.shape} is empty")
    if not np.isfinite(series.hu).all():
        problems.append("volume contains NaN or infinite HU")
    spacing = series.spacing_xyz_mm
    if not (np.isfinite(series.positions_lps).all() and all(math.isfinite(s) and s > 0 for s in spacing)):
        problems.append(f"spacing {spacing} or positions are not finite and positive")
    if not np.allclose(series.direction.T @ series.direction, np.eye(3), atol=1e-6):
        problems.append(f"direction {series.direction.tolist()} is not orthonormal")
    if depth not in (SLICES, SLICES - 1) or (depth == SLICES - 1 and not series.warnings):
        problems.append(f"volume has {depth} of {SLICES} slices and warnings {series.warnings}")
    if (rows, columns) == (ROWS, COLUMNS):
        # Slices read from untouched files must keep their exact HU, wherever the sort put them.
        untouched = {uid: k for k, uid in enumerate(original.sop_instance_uids) if k not in mutated}
        for position, dataset in enumerate(series.datasets):
            k = untouched.get(str(dataset.get("SOPInstanceUID", "")))
            if k is not None and not np.array_equal(series.hu[position], original.hu[k]):
                problems.append(f"untouched slice {k} decodes to different HU at volume index {position}")
    return problems


def _check_resources(outcome: GuardedResult) -> None:
    """Assert the time limit and the memory limit of one read."""
    assert outcome.elapsed_s <= EXAMPLE_TIME_LIMIT_S, f"read took {outcome.elapsed_s:.1f} s"
    assert outcome.peak_bytes <= EXAMPLE_MEMORY_LIMIT_BYTES, (
        f"read allocated {outcome.peak_bytes / 1024**2:.0f} MiB at peak "
        f"(limit {EXAMPLE_MEMORY_LIMIT_BYTES / 1024**2:.0f} MiB) and raised {outcome.error!r}"
    )


def _check_outcome(outcome: GuardedResult, original: OriginalSeries, mutated: set[int]) -> None:
    """Assert the reader contract for one read of a series whose slices ``mutated`` were changed."""
    _check_resources(outcome)
    if outcome.error is not None:
        _check_error(outcome.error)
        return
    series = outcome.value
    assert isinstance(series, CTSeries)
    problems = _series_problems(series, original, mutated)
    assert not problems, "read_ct_series returned an unusable series: " + "; ".join(problems)
    event(f"read {series.hu.shape[0]} slices")


# ---------------------------------------------------------------------------------------------
# Byte-level mutations
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlipBits:
    offset: int
    mask: int

    def apply(self, data: bytearray) -> None:
        if data:
            data[self.offset % len(data)] ^= self.mask


@dataclass(frozen=True)
class Overwrite:
    offset: int
    replacement: bytes

    def apply(self, data: bytearray) -> None:
        if data:
            start = self.offset % len(data)
            data[start : start + len(self.replacement)] = self.replacement


@dataclass(frozen=True)
class Insert:
    offset: int
    junk: bytes

    def apply(self, data: bytearray) -> None:
        start = self.offset % (len(data) + 1)
        data[start:start] = self.junk


@dataclass(frozen=True)
class Delete:
    offset: int
    length: int

    def apply(self, data: bytearray) -> None:
        if data:
            start = self.offset % len(data)
            del data[start : start + self.length]


@dataclass(frozen=True)
class Truncate:
    offset: int

    def apply(self, data: bytearray) -> None:
        if data:
            del data[self.offset % len(data) :]


@dataclass(frozen=True)
class Empty:
    def apply(self, data: bytearray) -> None:
        data.clear()


ByteMutation = FlipBits | Overwrite | Insert | Delete | Truncate | Empty

# The header of a slice file is its first ~1,330 bytes and the pixel data the last 2,048 bytes.
# Half of the offsets are drawn from the header, and offsets wrap around the file length.
_OFFSETS = st.one_of(st.integers(0, 1400), st.integers(0, 4095))

# Values that corrupt lengths and tags in telling ways: undefined length, zero, maximum.
_SPECIAL_BYTES = st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff", b"\x00", b"\x7f\xff\xff\xff"])

_BYTE_MUTATION: st.SearchStrategy[ByteMutation] = st.one_of(
    st.builds(FlipBits, offset=_OFFSETS, mask=st.integers(1, 255)),
    st.builds(Overwrite, offset=_OFFSETS, replacement=st.one_of(_SPECIAL_BYTES, st.binary(min_size=1, max_size=8))),
    st.builds(Insert, offset=_OFFSETS, junk=st.binary(min_size=1, max_size=64)),
    st.builds(Delete, offset=_OFFSETS, length=st.integers(1, 64)),
    st.builds(Truncate, offset=_OFFSETS),
)

_BYTE_MUTATIONS = st.one_of(st.just([Empty()]), st.lists(_BYTE_MUTATION, min_size=1, max_size=4))


def _mutate_bytes(data: bytes, mutations: Sequence[ByteMutation]) -> bytes:
    buffer = bytearray(data)
    for mutation in mutations:
        mutation.apply(buffer)
    return bytes(buffer)


@settings(FUZZ_SETTINGS, max_examples=scaled_examples(250))
@seed(20240611)
@given(index=st.integers(0, SLICES - 1), mutations=_BYTE_MUTATIONS)
def test_byte_mutations_keep_contract(original, examples_root, index, mutations):
    damaged = _mutate_bytes(original.blobs[index], mutations)
    with _example_folder(examples_root, original, {index: damaged}) as folder:
        _check_outcome(_read(folder), original, {index})


# ---------------------------------------------------------------------------------------------
# Header-level mutations
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeaderEdit:
    """Replace the encoded value of ``keyword`` with ``value`` (bytes as stored), or delete it when None."""

    keyword: str
    value: bytes | None


def _us(values: st.SearchStrategy[int]) -> st.SearchStrategy[bytes]:
    return values.map(lambda number: struct.pack("<H", number))


def _text(values: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    return values.map(lambda text: text.encode("latin-1"))


# A value of the wrong length (odd, or a 2-byte US of 1 or 3 bytes) for any element.
_RAW_GARBAGE = st.binary(max_size=6)

_US_VALUE = st.one_of(
    _us(st.sampled_from([0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 24, 32, 64, 4096, 65535])),
    _us(st.integers(0, 65535)),
    _RAW_GARBAGE,
)

_DS_NUMBER = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e4, max_value=1e4).map(lambda v: f"{v:.6g}"),
    st.sampled_from(["0", "-0", "1", "-1", "0.5", "2.5", "1e-320", "1e308", "-1e308", "1e999"]),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "", " ", "1x", "1,5", "0x10", "--1"]),
    st.text(alphabet="0123456789+-.eE naif", max_size=8),
)


def _ds_values(min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    return _text(st.lists(_DS_NUMBER, min_size=min_size, max_size=max_size).map("\\".join))


# Values drawn near the valid ones as well as far from them, so that some examples get past
# the first checks and reach sorting, stacking and decoding.
_UNIT_COMPONENT = st.sampled_from(["0", "1", "-1", "0.70710678", "1.0001", "0.999"])
_HEADER_VALUES: dict[str, st.SearchStrategy[bytes]] = {
    "Rows": _US_VALUE,
    "Columns": _US_VALUE,
    "BitsAllocated": _US_VALUE,
    "BitsStored": _US_VALUE,
    "HighBit": _US_VALUE,
    "PixelRepresentation": _US_VALUE,
    "SamplesPerPixel": _US_VALUE,
    "PixelSpacing": st.one_of(_ds_values(2, 2), _ds_values(0, 4), _RAW_GARBAGE),
    "ImagePositionPatient": st.one_of(_ds_values(3, 3), _ds_values(0, 5), _RAW_GARBAGE),
    "ImageOrientationPatient": st.one_of(
        _text(st.lists(_UNIT_COMPONENT, min_size=6, max_size=6).map("\\".join)), _ds_values(0, 8), _RAW_GARBAGE
    ),
    "RescaleSlope": st.one_of(_ds_values(1, 1), _ds_values(0, 2)),
    "RescaleIntercept": st.one_of(_ds_values(1, 1), _ds_values(0, 2)),
    "PhotometricInterpretation": _text(
        st.one_of(
            st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "", "monochrome2"]),
            st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=16),
        )
    ),
    "NumberOfFrames": _text(
        st.one_of(st.integers(-(2**31), 2**31 - 1).map(str), st.sampled_from(["", "0", "1", "2", "1.5", "abc"]))
    ),
}

# Deleting these must give a documented error or a clean skip of the file.
_DELETABLE = [
    *_HEADER_VALUES,
    "PixelData",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
]


@st.composite
def _header_edit(draw: st.DrawFn) -> HeaderEdit:
    if draw(st.integers(0, 3)) == 0:
        return HeaderEdit(draw(st.sampled_from(_DELETABLE)), None)
    keyword = draw(st.sampled_from(sorted(_HEADER_VALUES)))
    return HeaderEdit(keyword, draw(_HEADER_VALUES[keyword]))


# Every transfer syntax in pydicom's list, and UIDs that are not transfer syntaxes at all.
_TRANSFER_SYNTAXES = st.sampled_from(
    [str(uid) for uid in AllTransferSyntaxes] + [str(CTImageStorage), "1.2.3.4", "1.2.840.10008.1.2.4.999"]
)

_TARGETS = st.one_of(st.integers(0, SLICES - 1).map(lambda k: (k,)), st.just(tuple(range(SLICES))))


def _encode_part10(dataset: Dataset) -> bytes:
    """Encode ``dataset`` as a Part-10 file with an explicit VR little endian body.

    The body stays explicit VR little endian whatever TransferSyntaxUID the File Meta
    Information names, so that a fuzzed transfer syntax is a mislabelled file, as a faulty
    sender would write it.
    """
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, dataset.file_meta, enforce_standard=True)
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def _edit_header(blob: bytes, edits: Sequence[HeaderEdit], transfer_syntax: str | None) -> bytes:
    dataset = pydicom.dcmread(DicomBytesIO(blob))
    for edit in edits:
        tag = Tag(edit.keyword)
        if edit.value is None:
            if tag in dataset:
                del dataset[tag]
            continue
        # A raw element is written as these bytes without validation, like a faulty sender's file.
        dataset[tag] = RawDataElement(tag, dictionary_VR(tag), len(edit.value), edit.value, 0, False, True, True, False)
    if transfer_syntax is not None:
        dataset.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    return _encode_part10(dataset)


@settings(FUZZ_SETTINGS, max_examples=scaled_examples(300))
@seed(20240612)
@given(
    targets=_TARGETS,
    edits=st.lists(_header_edit(), min_size=1, max_size=4),
    transfer_syntax=st.one_of(st.none(), _TRANSFER_SYNTAXES),
)
def test_header_mutations_keep_contract(original, examples_root, targets, edits, transfer_syntax):
    replacements = {k: _edit_header(original.blobs[k], edits, transfer_syntax) for k in targets}
    with _example_folder(examples_root, original, replacements) as folder:
        _check_outcome(_read(folder), original, set(targets))


def _with_huge_grid(blob: bytes) -> bytes:
    return _edit_header(
        blob, [HeaderEdit("Rows", struct.pack("<H", 65535)), HeaderEdit("Columns", struct.pack("<H", 65535))], None
    )


def test_huge_grid_in_one_slice_rejected_quickly(original, examples_root):
    with _example_folder(examples_root, original, {2: _with_huge_grid(original.blobs[2])}) as folder:
        outcome = _read(folder)
    assert isinstance(outcome.error, InputError), f"expected InputError, got {outcome.error!r}"
    assert outcome.error.code == "series.inconsistent_grid"
    assert outcome.elapsed_s < 1.0
    assert outcome.peak_bytes < 16 * 1024**2


# ---------------------------------------------------------------------------------------------
# Foreign files mixed into the folder
# ---------------------------------------------------------------------------------------------


def _dicomdir_like() -> bytes:
    """Return a Media Storage Directory (DICOMDIR-like) file: DICOM, but no image and no series."""
    record = Dataset()
    record.DirectoryRecordType = "PATIENT"
    record.PatientID = "FUZZ"
    dataset = Dataset()
    dataset.SOPClassUID = MediaStorageDirectoryStorage
    dataset.SOPInstanceUID = generate_uid(entropy_srcs=["fuzz-dicomdir"])
    dataset.FileSetID = "FUZZ"
    dataset.DirectoryRecordSequence = [record]
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return _encode_part10(dataset)


def _structure_set_like() -> bytes:
    """Return an RT Structure Set header in its own series: DICOM with a series, but no pixel data."""
    dataset = Dataset()
    dataset.SOPClassUID = RTStructureSetStorage
    dataset.SOPInstanceUID = generate_uid(entropy_srcs=["fuzz-rtstruct"])
    dataset.SeriesInstanceUID = generate_uid(entropy_srcs=["fuzz-rtstruct-series"])
    dataset.Modality = "RTSTRUCT"
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return _encode_part10(dataset)


#: Warning code that each kind of foreign file must produce (hidden files produce none).
_FOREIGN_WARNING = {
    "bytes": "file.not_dicom",
    "text": "file.not_dicom",
    "empty": "file.not_dicom",
    "dicomdir": "file.no_series_uid",
    "structure_set": "file.not_image",
}


@dataclass(frozen=True)
class ForeignFile:
    """A file that is not part of the series: its name, kind and content."""

    name: str
    kind: str
    content: bytes
    hidden: bool
    in_subfolder: bool


_FILE_NAME = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="/\x00"), min_size=1, max_size=30
)

_FOREIGN_FILE = st.builds(
    ForeignFile,
    name=_FILE_NAME,
    kind=st.sampled_from(sorted(_FOREIGN_WARNING)),
    content=st.one_of(st.binary(max_size=2048), st.text(max_size=500).map(str.encode)),
    hidden=st.booleans(),
    in_subfolder=st.booleans(),
)


def _foreign_content(item: ForeignFile) -> bytes:
    if item.kind == "empty":
        return b""
    if item.kind == "dicomdir":
        return _dicomdir_like()
    if item.kind == "structure_set":
        return _structure_set_like()
    return item.content


@settings(FUZZ_SETTINGS, max_examples=scaled_examples(80))
@seed(20240613)
@given(foreign=st.lists(_FOREIGN_FILE, min_size=1, max_size=6))
def test_foreign_files_skipped_with_warnings(original, examples_root, foreign):
    with _example_folder(examples_root, original, {}) as folder:
        for number, item in enumerate(foreign):
            # The number keeps names unique and never "." or "..". A leading dot hides the file.
            name = f"{'.' if item.hidden else ''}{number:02d}-{item.name}"
            target = folder / "extra" / name if item.in_subfolder else folder / name
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(_foreign_content(item))
        outcome = _read(folder)
        _check_resources(outcome)

    assert outcome.error is None, f"foreign files made the read fail: {outcome.error}"
    series = outcome.value
    assert isinstance(series, CTSeries)
    assert np.array_equal(series.hu, original.hu)
    codes = {warning.code for warning in series.warnings}
    expected = {_FOREIGN_WARNING[item.kind] for item in foreign if not item.hidden}
    assert expected <= codes, f"warnings {sorted(codes)} lack {sorted(expected - codes)}"


# ---------------------------------------------------------------------------------------------
# Minimal reproducers of fixed and open defects
# ---------------------------------------------------------------------------------------------


def _read_with_edits(
    original: OriginalSeries,
    root: Path,
    targets: Sequence[int],
    edits: Sequence[HeaderEdit],
    transfer_syntax: str | None = None,
) -> GuardedResult:
    replacements = {k: _edit_header(original.blobs[k], edits, transfer_syntax) for k in targets}
    with _example_folder(root, original, replacements) as folder:
        return _read(folder)


def _assert_rejected(outcome: GuardedResult) -> InputError:
    """Assert that the read raised InputError with a documented code, and return it."""
    assert outcome.error is not None, "the read succeeded"
    assert isinstance(outcome.error, InputError), f"raised {type(outcome.error).__name__}: {outcome.error}"
    assert outcome.error.code.startswith(DOCUMENTED_CODE_PREFIXES)
    return outcome.error


# Cases that fuzzing found and that worker/series.py now rejects; they guard the fixes.


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("PixelSpacing", b"1x\\1 "),
        ("ImagePositionPatient", b"0\\0\\1x"),
        ("ImageOrientationPatient", b"1x\\0\\0\\0\\1\\0 "),
        ("RescaleSlope", b"1x"),
        ("RescaleSlope", b"nan "),
        ("RescaleSlope", b"1e308 "),
        ("RescaleIntercept", b"inf "),
    ],
)
def test_bad_number_in_one_slice_rejected(original, examples_root, keyword, value):
    outcome = _read_with_edits(original, examples_root, [2], [HeaderEdit(keyword, value)])
    assert _assert_rejected(outcome).code == "series.invalid_tag"


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("ImagePositionPatient", b"nan\\nan\\nan "),
        ("PixelSpacing", b"nan\\nan "),
        ("PixelSpacing", b"inf\\inf "),
        ("Rows", struct.pack("<H", 0)),
    ],
)
def test_bad_geometry_in_every_slice_rejected(original, examples_root, keyword, value):
    outcome = _read_with_edits(original, examples_root, range(SLICES), [HeaderEdit(keyword, value)])
    assert _assert_rejected(outcome).code == "series.invalid_tag"


# More cases that fuzzing found, one minimal reproducer each, fixed in worker/series.py and
# worker/series_checks.py.


def test_non_numeric_orientation_of_first_slice_rejected(original, examples_root):
    # The series is chosen (axial or not) from the first file's orientation before the checks run.
    edit = HeaderEdit("ImageOrientationPatient", b"1x\\0\\0\\0\\1\\0 ")
    _assert_rejected(_read_with_edits(original, examples_root, [0], [edit]))


@pytest.mark.parametrize(
    ("index", "keyword"),
    [(2, "PixelSpacing"), (2, "ImagePositionPatient"), (2, "ImageOrientationPatient"), (0, "ImageOrientationPatient")],
)
def test_single_value_vector_rejected(original, examples_root, index, keyword):
    _assert_rejected(_read_with_edits(original, examples_root, [index], [HeaderEdit(keyword, b"1 ")]))


@pytest.mark.parametrize(
    ("keyword", "value"), [("Rows", struct.pack("<2H", ROWS, ROWS)), ("RescaleIntercept", b"0\\0 ")]
)
def test_multi_value_scalar_rejected(original, examples_root, keyword, value):
    _assert_rejected(_read_with_edits(original, examples_root, range(SLICES), [HeaderEdit(keyword, value)]))


def test_transfer_syntax_not_a_transfer_syntax_rejected(original, examples_root):
    # The SOP Class UID of CT Image Storage in place of a transfer syntax.
    _assert_rejected(_read_with_edits(original, examples_root, [2], [], transfer_syntax=str(CTImageStorage)))


@pytest.mark.parametrize("length", [141, 152], ids=["cut-in-group-length", "cut-in-meta-version"])
def test_file_cut_in_file_meta_skipped(original, examples_root, length):
    # Cut off inside the File Meta Information: pydicom raises BytesLengthException (141
    # bytes) or struct.error (152 bytes). The file must be skipped as not DICOM.
    with _example_folder(examples_root, original, {0: original.blobs[0][:length]}) as folder:
        outcome = _read(folder)
    assert outcome.error is None, f"raised {type(outcome.error).__name__}: {outcome.error}"
    series = outcome.value
    assert isinstance(series, CTSeries)
    assert "file.not_dicom" in {warning.code for warning in series.warnings}
    assert np.array_equal(series.hu, original.hu[1:])


def test_huge_length_field_read_without_huge_buffer(examples_root):
    # SOPClassUID (0008,0016) in implicit VR with a declared length of 0x44000000 bytes (1 GiB)
    # but only 16 bytes of value: the file is 24 bytes long.
    folder = Path(tempfile.mkdtemp(dir=examples_root))
    path = folder / "huge-length.dcm"
    path.write_bytes(b"\x08\x00\x16\x00" + struct.pack("<I", 0x44000000) + b"1.2.840.10008.5.1")
    outcome = guarded_call(scan_files, [path], limit_s=EXAMPLE_TIME_LIMIT_S)
    shutil.rmtree(folder)
    assert outcome.error is None, f"raised {type(outcome.error).__name__}: {outcome.error}"
    assert outcome.peak_bytes < 16 * 1024**2, f"allocated {outcome.peak_bytes / 1024**2:.0f} MiB"


def test_huge_grid_in_every_slice_rejected_quickly(original, examples_root):
    replacements = {k: _with_huge_grid(blob) for k, blob in enumerate(original.blobs)}
    with _example_folder(examples_root, original, replacements) as folder:
        outcome = _read(folder)
    _assert_rejected(outcome)
    assert outcome.elapsed_s < 1.0
    assert outcome.peak_bytes < 16 * 1024**2

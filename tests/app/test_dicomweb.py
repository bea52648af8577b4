"""DICOMweb helpers: STOW-RS body parsing, store responses and WADO-RS bodies."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from app.dicomweb import (
    READ_CHUNK_BYTES,
    ReceivedFile,
    UploadLimits,
    UploadTooLarge,
    multipart_related_body,
    parse_related_content_type,
    read_header,
    receive_multipart_related,
)
from app.stow_response import store_response, store_status
from model.errors import InputError

BOUNDARY = "sats-test-boundary"
GENEROUS = UploadLimits(max_bytes=10_000_000, max_files=100)
UID_ROOT = "1.2.826.0.1.3680043.8.498."


# --- helpers -------------------------------------------------------------------------


def build_body(
    parts: list[tuple[bytes, list[str]]],
    boundary: str = BOUNDARY,
    preamble: bytes = b"",
    epilogue: bytes = b"",
) -> bytes:
    """Frame ``(data, header lines)`` pairs as an RFC 2046 multipart body."""
    body = bytearray(preamble)
    for index, (data, headers) in enumerate(parts):
        body += b"--" if index == 0 and not preamble else b"\r\n--"
        body += boundary.encode() + b"\r\n"
        for header in headers:
            body += header.encode() + b"\r\n"
        body += b"\r\n" + data
    body += b"\r\n--" + boundary.encode() + b"--"
    body += epilogue
    return bytes(body)


def dicom_part(data: bytes) -> tuple[bytes, list[str]]:
    return data, ["Content-Type: application/dicom"]


async def chunked(body: bytes, chunk_size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), chunk_size):
        yield body[start : start + chunk_size]


def receive(
    body: bytes, folder: Path, chunk_size: int = 65536, boundary: str = BOUNDARY, limits: UploadLimits = GENEROUS
) -> list[ReceivedFile]:
    return asyncio.run(receive_multipart_related(chunked(body, chunk_size), boundary, folder, limits))


def receive_error(body: bytes, folder: Path, chunk_size: int = 65536, limits: UploadLimits = GENEROUS) -> InputError:
    with pytest.raises(InputError) as caught:
        receive(body, folder, chunk_size, limits=limits)
    return caught.value


def ct_bytes(instance_number: int, pixel_data: bytes = bytes(range(32))) -> bytes:
    """Return a PS3.10 file of a 4 x 4 CT slice (16-bit signed, 0.5 mm pixels)."""
    dataset = Dataset()
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = f"{UID_ROOT}1.{instance_number}"
    dataset.StudyInstanceUID = f"{UID_ROOT}2"
    dataset.SeriesInstanceUID = f"{UID_ROOT}3"
    dataset.Modality = "CT"
    dataset.PatientName = "Test^Phantom"
    dataset.InstanceNumber = instance_number
    dataset.ImagePositionPatient = [-1.0, -1.0, 2.5 * instance_number]
    dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    dataset.PixelSpacing = [0.5, 0.5]
    dataset.SliceThickness = 2.5
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows = 4
    dataset.Columns = 4
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1
    dataset.RescaleIntercept = 0.0
    dataset.RescaleSlope = 1.0
    dataset.PixelData = pixel_data

    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class Stored:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str


@dataclass
class Failed:
    sop_class_uid: str | None
    sop_instance_uid: str | None
    reason: int


# --- parse_related_content_type ------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('multipart/related; type="application/dicom"; boundary=abc123', "abc123"),
        ("multipart/related; type=application/dicom; boundary=abc123", "abc123"),
        ('multipart/related; type="application/dicom"; boundary="abc123"', "abc123"),
        ("multipart/related; boundary=abc123", "abc123"),
        ('Multipart/Related; Boundary="a b:c=d"; Type="Application/DICOM"', "a b:c=d"),
        ("multipart/related;boundary=abc123;type=application/dicom;transfer-syntax=1.2.840.10008.1.2.1", "abc123"),
    ],
)
def test_content_type_boundary_found(header: str, expected: str) -> None:
    assert parse_related_content_type(header) == expected


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("multipart/form-data; boundary=abc", "upload.bad_content_type"),
        ("application/dicom", "upload.bad_content_type"),
        ("", "upload.bad_content_type"),
        ('multipart/related; type="application/dicom"', "upload.bad_content_type"),
        ('multipart/related; boundary=""', "upload.bad_content_type"),
        ("multipart/related; boundary=" + "x" * 71, "upload.bad_content_type"),
        ('multipart/related; boundary="ends with space "', "upload.bad_content_type"),
        ('multipart/related; type="application/dicom+json"; boundary=abc', "upload.unsupported_media_type"),
        ("multipart/related; type=image/jpeg; boundary=abc", "upload.unsupported_media_type"),
    ],
)
def test_content_type_rejected(header: str, code: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_related_content_type(header)
    assert caught.value.code == code
    assert repr(header) in str(caught.value)


# --- receive_multipart_related: well-formed bodies -----------------------------------

# Part data chosen to trip a careless parser: the boundary without the leading CRLF, a
# CRLF and the start of the delimiter that then diverges, and CRLFs at both ends.
TRICKY_PARTS = [
    b"first part",
    b"--" + BOUNDARY.encode() + b"\r\n looks like a delimiter but has no CRLF before it",
    b"near miss:\r\n--" + BOUNDARY[:-3].encode() + b"XYZ and \r\n-- and \r\r\n\n",
    b"\r\nstarts and ends with CRLF\r\n",
    b"",
    bytes(range(256)) * 3,
]


@pytest.mark.parametrize("chunk_size", [1, 7, 65536])
def test_receive_tricky_parts_byte_identical(tmp_path: Path, chunk_size: int) -> None:
    parts = [dicom_part(data) for data in TRICKY_PARTS]
    body = build_body(parts, preamble=b"This is the preamble.\r\n", epilogue=b"\r\nThis is the epilogue.\r\n")

    files = receive(body, tmp_path, chunk_size)

    assert [file.path.name for file in files] == [f"part-{n:05d}.dcm" for n in range(1, len(TRICKY_PARTS) + 1)]
    for file, data in zip(files, TRICKY_PARTS, strict=True):
        assert file.path.read_bytes() == data
        assert file.size == len(data)
        assert file.content_type == "application/dicom"
    assert sorted(path.name for path in tmp_path.iterdir()) == [file.path.name for file in files]


@pytest.mark.parametrize("chunk_size", [1, 7, 65536])
def test_receive_optional_content_length(tmp_path: Path, chunk_size: int) -> None:
    parts = [
        (b"with length", ["Content-Type: application/dicom", "Content-Length: 11"]),
        (b"without length", ["content-type: APPLICATION/DICOM; transfer-syntax=1.2.840.10008.1.2.1"]),
        (b"binary", ["Content-Type: application/dicom", "Content-Transfer-Encoding: binary", "Content-ID: <p3>"]),
    ]
    body = build_body(parts)

    files = receive(body, tmp_path, chunk_size)

    assert [file.path.read_bytes() for file in files] == [b"with length", b"without length", b"binary"]
    assert files[1].content_type == "APPLICATION/DICOM; transfer-syntax=1.2.840.10008.1.2.1"


def test_receive_quoted_boundary_from_header(tmp_path: Path) -> None:
    boundary = "quoted boundary:with=specials"
    header = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    body = build_body([dicom_part(b"one"), dicom_part(b"two")], boundary=boundary)

    files = receive(body, tmp_path, 7, boundary=parse_related_content_type(header))

    assert [file.path.read_bytes() for file in files] == [b"one", b"two"]


def test_receive_body_with_leading_crlf(tmp_path: Path) -> None:
    body = b"\r\n" + build_body([dicom_part(b"data")])

    files = receive(body, tmp_path, 3)

    assert [file.path.read_bytes() for file in files] == [b"data"]


@pytest.mark.parametrize("chunk_size", [1, 7, 65536])
def test_receive_real_dicom_files(tmp_path: Path, chunk_size: int) -> None:
    # The pixel data of the second slice contains the boundary, without the leading CRLF.
    pixel_data = (b"--" + BOUNDARY.encode() + bytes(32))[:32]
    instances = [ct_bytes(1), ct_bytes(2, pixel_data)]
    body = build_body([dicom_part(data) for data in instances], preamble=b"preamble")

    files = receive(body, tmp_path, chunk_size)

    assert [file.path.read_bytes() for file in files] == instances
    headers = [read_header(file.path) for file in files]
    assert [str(header.SOPInstanceUID) for header in headers if header is not None] == [
        f"{UID_ROOT}1.1",
        f"{UID_ROOT}1.2",
    ]


def test_receive_limits_exactly_met(tmp_path: Path) -> None:
    body = build_body([dicom_part(b"a"), dicom_part(b"b")])

    files = receive(body, tmp_path, 5, limits=UploadLimits(max_bytes=len(body), max_files=2))

    assert len(files) == 2


# --- receive_multipart_related: rejected bodies leave nothing behind -----------------


def test_receive_too_large_empties_folder(tmp_path: Path) -> None:
    body = build_body([dicom_part(b"a" * 100), dicom_part(b"b" * 100)])

    error = receive_error(body, tmp_path, 7, limits=UploadLimits(max_bytes=len(body) - 1, max_files=10))

    assert isinstance(error, UploadTooLarge)
    assert error.code == "upload.too_large"
    assert str(len(body) - 1) in str(error)
    assert list(tmp_path.iterdir()) == []


def test_receive_too_many_parts_empties_folder(tmp_path: Path) -> None:
    body = build_body([dicom_part(b"a"), dicom_part(b"b"), dicom_part(b"c")])

    error = receive_error(body, tmp_path, 7, limits=UploadLimits(max_bytes=10_000, max_files=2))

    assert isinstance(error, UploadTooLarge)
    assert error.code == "upload.too_many_files"
    assert list(tmp_path.iterdir()) == []


CLOSING_DELIMITER = b"\r\n--" + BOUNDARY.encode() + b"--"


@pytest.mark.parametrize(
    "removed_bytes",
    [
        pytest.param(len(CLOSING_DELIMITER), id="closing-delimiter-missing"),
        pytest.param(2, id="closing-dashes-missing"),
        pytest.param(len(CLOSING_DELIMITER) + 10, id="inside-last-part"),
    ],
)
def test_receive_truncated_empties_folder(tmp_path: Path, removed_bytes: int) -> None:
    body = build_body([dicom_part(b"a" * 20), dicom_part(b"b" * 20), dicom_part(b"c" * 20)])
    assert body.endswith(CLOSING_DELIMITER)

    error = receive_error(body[:-removed_bytes], tmp_path, 7)

    assert error.code == "upload.truncated"
    assert list(tmp_path.iterdir()) == []


def test_receive_cut_after_part_headers(tmp_path: Path) -> None:
    body = b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\npartial"

    error = receive_error(body, tmp_path)

    assert error.code == "upload.truncated"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        (["Content-Type: image/png"], "'image/png'"),
        (["Content-Type: application/dicom+json"], "'application/dicom+json'"),
        (["Content-Length: 3"], "no Content-Type"),
    ],
)
def test_receive_wrong_part_type(tmp_path: Path, headers: list[str], named: str) -> None:
    body = build_body([dicom_part(b"good first part"), (b"bad", headers)])

    error = receive_error(body, tmp_path, 7)

    assert error.code == "upload.unsupported_media_type"
    assert "Part 2" in str(error)
    assert named in str(error)
    assert list(tmp_path.iterdir()) == []


def test_receive_base64_part_rejected(tmp_path: Path) -> None:
    body = build_body([(b"AAAA", ["Content-Type: application/dicom", "Content-Transfer-Encoding: base64"])])

    error = receive_error(body, tmp_path)

    assert error.code == "upload.unsupported_transfer_encoding"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("length", ["5", "abc", "-3"])
def test_receive_content_length_mismatch(tmp_path: Path, length: str) -> None:
    body = build_body([dicom_part(b"ok"), (b"abc", ["Content-Type: application/dicom", f"Content-Length: {length}"])])

    error = receive_error(body, tmp_path, 7)

    assert error.code == "upload.malformed"
    assert "Part 2" in str(error)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="no-bytes"),
        pytest.param(b"\r\n\r\n", id="blank-lines"),
        pytest.param(b"--" + BOUNDARY.encode() + b"--\r\n", id="closing-delimiter-only"),
        pytest.param(b"preamble\r\n--" + BOUNDARY.encode() + b"--", id="preamble-and-closing-delimiter"),
    ],
)
def test_receive_empty_body(tmp_path: Path, body: bytes) -> None:
    error = receive_error(body, tmp_path, 3)

    assert error.code == "upload.empty"
    assert list(tmp_path.iterdir()) == []


def test_receive_other_boundary_is_malformed(tmp_path: Path) -> None:
    body = build_body([dicom_part(b"data")], boundary="another-boundary")

    error = receive_error(body, tmp_path, 7)

    assert error.code == "upload.malformed"
    assert repr(BOUNDARY) in str(error)


def test_receive_bad_header_line_is_malformed(tmp_path: Path) -> None:
    body = build_body([(b"data", ["Content-Type: application/dicom", "Bad Header Name: x"])])

    error = receive_error(body, tmp_path)

    assert error.code == "upload.malformed"
    assert list(tmp_path.iterdir()) == []


def test_receive_stream_error_deletes_files(tmp_path: Path) -> None:
    body = build_body([dicom_part(b"a" * 50), dicom_part(b"b" * 50)])

    class ClientDisconnectError(Exception):
        pass

    async def disconnecting() -> AsyncIterator[bytes]:
        yield body[: len(body) - 20]
        raise ClientDisconnectError

    with pytest.raises(ClientDisconnectError):
        asyncio.run(receive_multipart_related(disconnecting(), BOUNDARY, tmp_path, GENEROUS))
    assert list(tmp_path.iterdir()) == []


def test_receive_cancelled_deletes_files(tmp_path: Path) -> None:
    body = build_body([dicom_part(b"a" * 50), dicom_part(b"b" * 50)])
    names_before_cancel: list[str] = []

    async def stalling() -> AsyncIterator[bytes]:
        yield body[: len(body) - 20]
        names_before_cancel.extend(sorted(path.name for path in tmp_path.iterdir()))
        await asyncio.sleep(3600)

    async def receive_with_timeout() -> None:
        receiving = receive_multipart_related(stalling(), BOUNDARY, tmp_path, GENEROUS)
        await asyncio.wait_for(receiving, timeout=0.2)

    with pytest.raises(TimeoutError):
        asyncio.run(receive_with_timeout())
    assert names_before_cancel == ["part-00001.dcm", "part-00002.dcm.tmp"]
    assert list(tmp_path.iterdir()) == []


def test_receive_rejects_unusable_folder(tmp_path: Path) -> None:
    body = build_body([dicom_part(b"data")])
    (tmp_path / "existing.dcm").write_bytes(b"x")

    with pytest.raises(ValueError, match="not empty"):
        receive(body, tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        receive(body, tmp_path / "missing")


@pytest.mark.parametrize(("max_bytes", "max_files"), [(0, 1), (1, 0), (-5, 10)])
def test_upload_limits_non_positive(max_bytes: int, max_files: int) -> None:
    with pytest.raises(ValueError, match="must be at least 1"):
        UploadLimits(max_bytes=max_bytes, max_files=max_files)


# --- store_response and store_status -------------------------------------------------


def test_store_response_mixed_success_and_failure() -> None:
    stored = [
        Stored(CTImageStorage, "1.2.3.4", "1.2.3", "1.2.3.1"),
        Stored(CTImageStorage, "1.2.3.5", "1.2.3", "1.2.3.1"),
    ]
    failed = [Failed("1.2.840.10008.5.1.4.1.1.481.5", "1.2.3.9", 0x0122), Failed(None, None, 0xC000)]

    def instance_url(study: str, series: str, instance: str) -> str:
        return f"https://pacs.example/dicomweb/studies/{study}/series/{series}/instances/{instance}"

    response = store_response(stored, failed, "https://pacs.example/dicomweb/studies/1.2.3", instance_url)

    assert response == {
        "00081190": {"vr": "UR", "Value": ["https://pacs.example/dicomweb/studies/1.2.3"]},
        "00081198": {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.481.5"]},
                    "00081155": {"vr": "UI", "Value": ["1.2.3.9"]},
                    "00081197": {"vr": "US", "Value": [290]},
                },
                {
                    "00081150": {"vr": "UI"},
                    "00081155": {"vr": "UI"},
                    "00081197": {"vr": "US", "Value": [49152]},
                },
            ],
        },
        "00081199": {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
                    "00081155": {"vr": "UI", "Value": ["1.2.3.4"]},
                    "00081190": {
                        "vr": "UR",
                        "Value": ["https://pacs.example/dicomweb/studies/1.2.3/series/1.2.3.1/instances/1.2.3.4"],
                    },
                },
                {
                    "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
                    "00081155": {"vr": "UI", "Value": ["1.2.3.5"]},
                    "00081190": {
                        "vr": "UR",
                        "Value": ["https://pacs.example/dicomweb/studies/1.2.3/series/1.2.3.1/instances/1.2.3.5"],
                    },
                },
            ],
        },
    }


def test_store_response_all_stored_without_urls() -> None:
    response = store_response([Stored(CTImageStorage, "1.2.3.4", "1.2.3", "1.2.3.1")], [], None, None)

    assert response == {
        "00081190": {"vr": "UR"},
        "00081199": {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": [CTImageStorage]},
                    "00081155": {"vr": "UI", "Value": ["1.2.3.4"]},
                    "00081190": {"vr": "UR"},
                }
            ],
        },
    }


def test_store_response_all_failed() -> None:
    response = store_response([], [Failed(None, None, 0xC000)], None, None)

    assert "00081199" not in response
    assert response["00081198"]["Value"][0]["00081197"] == {"vr": "US", "Value": [0xC000]}


@pytest.mark.parametrize(
    ("stored", "failed", "message"),
    [
        ([], [], "both empty"),
        ([Stored(CTImageStorage, "", "1.2", "1.3")], [], "lacks a SOP"),
        ([], [Failed(None, None, 0)], "failure reason 0"),
        ([], [Failed(None, None, 0x10000)], "failure reason 65536"),
    ],
)
def test_store_response_rejects_invalid_input(stored: list[Stored], failed: list[Failed], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store_response(stored, failed, None, None)


@pytest.mark.parametrize(
    ("stored_count", "failed_count", "status"),
    [(1, 0, 200), (3, 0, 200), (2, 1, 202), (1, 5, 202), (0, 1, 409), (0, 4, 409)],
)
def test_store_status_by_counts(stored_count: int, failed_count: int, status: int) -> None:
    assert store_status(stored_count, failed_count) == status


@pytest.mark.parametrize(("stored_count", "failed_count"), [(0, 0), (-1, 2), (2, -1)])
def test_store_status_rejects_invalid_counts(stored_count: int, failed_count: int) -> None:
    with pytest.raises(ValueError):
        store_status(stored_count, failed_count)


# --- multipart_related_body ------------------------------------------------------------


def test_wado_body_exact_framing(tmp_path: Path) -> None:
    first = tmp_path / "first.dcm"
    first.write_bytes(b"FIRST")
    second = tmp_path / "second.dcm"
    second.write_bytes(b"SECOND\r\n")

    chunks, content_type = multipart_related_body([first, second], boundary="b1")

    assert content_type == 'multipart/related; type="application/dicom"; boundary=b1'
    assert b"".join(chunks) == (
        b"--b1\r\nContent-Type: application/dicom\r\n\r\nFIRST"
        b"\r\n--b1\r\nContent-Type: application/dicom\r\n\r\nSECOND\r\n"
        b"\r\n--b1--\r\n"
    )


def test_wado_body_quotes_boundary_with_specials(tmp_path: Path) -> None:
    path = tmp_path / "one.dcm"
    path.write_bytes(b"x")

    _, content_type = multipart_related_body([path], boundary="a b:c")

    assert content_type == 'multipart/related; type="application/dicom"; boundary="a b:c"'
    assert parse_related_content_type(content_type) == "a b:c"


def test_wado_body_default_boundary_is_random(tmp_path: Path) -> None:
    path = tmp_path / "one.dcm"
    path.write_bytes(b"x")

    _, first = multipart_related_body([path])
    _, second = multipart_related_body([path])

    assert first != second
    assert len(parse_related_content_type(first)) == 32


def test_wado_body_reads_large_file_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "large.dcm"
    path.write_bytes(b"\x5a" * (2 * READ_CHUNK_BYTES + 10))

    chunks, _ = multipart_related_body([path], boundary="b")
    sizes = [len(chunk) for chunk in chunks]

    assert max(sizes) == READ_CHUNK_BYTES
    assert sum(sizes) == path.stat().st_size + len(b"--b\r\nContent-Type: application/dicom\r\n\r\n\r\n--b--\r\n")


def test_wado_body_round_trip_through_receiver(tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    contents = [ct_bytes(1), b"\r\n--not-the-boundary\r\n", bytes(range(256)) * 6000, ct_bytes(2)]
    paths = []
    for index, data in enumerate(contents):
        path = sources / f"{index}.dcm"
        path.write_bytes(data)
        paths.append(path)
    received = tmp_path / "received"
    received.mkdir()

    chunks, content_type = multipart_related_body(paths)
    body = b"".join(chunks)
    files = receive(body, received, 4093, boundary=parse_related_content_type(content_type))

    assert [file.path.read_bytes() for file in files] == contents


def test_wado_body_rejects_invalid_arguments(tmp_path: Path) -> None:
    path = tmp_path / "one.dcm"
    path.write_bytes(b"x")

    with pytest.raises(ValueError, match="paths is empty"):
        multipart_related_body([])
    with pytest.raises(FileNotFoundError, match="missing.dcm"):
        multipart_related_body([path, tmp_path / "missing.dcm"])
    with pytest.raises(ValueError, match="not allow"):
        multipart_related_body([path], boundary="semi;colon")
    with pytest.raises(ValueError, match="more than the 70"):
        multipart_related_body([path], boundary="b" * 71)


# --- read_header -----------------------------------------------------------------------


def test_read_header_skips_pixel_data(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    path.write_bytes(ct_bytes(7))

    header = read_header(path)

    assert header is not None
    assert header.SOPClassUID == CTImageStorage
    assert header.SOPInstanceUID == f"{UID_ROOT}1.7"
    assert header.Rows == 4
    assert "PixelData" not in header


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"This is a plain text file, not a DICOM instance.\r\n" * 5, id="text"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + bytes(64), id="png"),
    ],
)
def test_read_header_non_dicom(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "part-00001.dcm"
    path.write_bytes(data)

    assert read_header(path) is None


def test_read_header_requires_sop_instance_uid(tmp_path: Path) -> None:
    dataset = Dataset()
    dataset.SOPClassUID = CTImageStorage
    dataset.StudyInstanceUID = generate_uid()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "no-instance-uid.dcm"
    dataset.save_as(path, enforce_file_format=False)

    assert read_header(path) is None


def test_read_header_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_header(tmp_path / "missing.dcm")


# --- gateway constraint ------------------------------------------------------------------


def test_import_does_not_load_torch() -> None:
    code = "import sys, app.dicomweb; sys.exit('torch' in sys.modules)"

    repository_root = Path(__file__).resolve().parents[2]

    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=repository_root, capture_output=True, text=True, check=False
    )

    assert completed.returncode == 0, completed.stderr or "app.dicomweb imported torch"

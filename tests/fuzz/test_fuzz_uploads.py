"""Property-based fuzzing of the upload routes (STOW-RS and the plain upload) through TestClient.

The gateway runs in-process with small upload limits, against the real Redis test database
(15), which is flushed before and after the module and before every example. Every example
sends one request and checks the contract of the route:

- the status is one that the route documents: 200, 202, 409 (STOW-RS), 200, 201 (upload),
  or 400, 413, 415 (both);
- the body is JSON: the route's store response, or ``{"error": {"code", "message"}}``;
- no exception leaves the app (TestClient re-raises it), so no request gets HTTP 500;
- the incoming folder is empty afterwards, and a rejected request (4xx) queued no job, left
  no job record and left no input folder;
- no request runs longer than :data:`REQUEST_TIME_LIMIT_S` or allocates more than
  :data:`REQUEST_MEMORY_LIMIT_BYTES` (traced by :mod:`tracemalloc`, every thread).

Hypothesis runs with a fixed seed and without its example database. :mod:`tests.fuzz`
describes what that makes reproducible and the environment variables of longer runs.
"""

from __future__ import annotations

import io
import shutil
import struct
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import event, given, seed, settings
from hypothesis import strategies as st

from app.main import create_app
from app.settings import Settings
from tests.conftest import SERVICE_REDIS_URL, TEST_API_KEY
from tests.fuzz import FUZZ_SETTINGS, GuardedResult, guarded_call, scaled_examples
from worker.synthetic_dicom import Ball, SeriesGeometry, render_phantom, write_ct_series

# Fuzzed DICOM headers make pydicom warn about invalid values; the assertions check the outcome.
pytestmark = [pytest.mark.fuzz, pytest.mark.filterwarnings("ignore::UserWarning")]

AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}

#: Upload limits of the gateway under test, small so that examples reach HTTP 413.
MAX_UPLOAD_BYTES = 64 * 1024
MAX_UPLOAD_FILES = 8

#: Maximum wall time of one request, far above the 0.02 s that a request took on average on 2 CPU cores.
REQUEST_TIME_LIMIT_S = 10.0

#: Maximum traced allocation peak of one request. Bodies are at most MAX_UPLOAD_BYTES long.
REQUEST_MEMORY_LIMIT_BYTES = 256 * 1024**2

STOW_STATUSES = {200, 202, 409, 400, 413, 415}
UPLOAD_STATUSES = {200, 201, 400, 413, 415}

#: Error codes that each error status may carry (see app/errors.py and app/dicomweb.py).
CODES_BY_STATUS = {
    413: {"upload.too_large", "upload.too_many_files", "input.zip_too_large"},
    415: {"upload.unsupported_media_type"},
}

# ---------------------------------------------------------------------------------------------
# The gateway and the request guard
# ---------------------------------------------------------------------------------------------


@dataclass
class Gateway:
    """The gateway under test: its client, its settings and the Redis database it uses."""

    client: TestClient
    settings: Settings
    redis: redis.Redis

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # Hypothesis prints fixtures of a failing example this way.
        printer.text(f"Gateway(data in {self.settings.data_dir})")


class SeriesFiles(tuple):
    """The files of a valid CT series, slice ``k`` at index ``k``."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # Hypothesis prints fixtures of a failing example this way, and the bytes would fill pages.
        printer.text(f"SeriesFiles({len(self)} files)")


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> SeriesFiles:
    """The files of a valid 3-slice CT series of 16 x 16 (about 1.8 kB each)."""
    geometry = SeriesGeometry.axial(
        "HFS", rows=16, columns=16, slices=3, pixel_spacing_mm=(2.0, 2.0), slice_spacing_mm=3.0
    )
    volume = render_phantom(geometry, [Ball((0.0, 0.0, 0.0), 10.0, 200.0)], background_hu=0.0)
    paths = write_ct_series(volume, geometry, tmp_path_factory.mktemp("fuzz-upload-series"), uid_seed="fuzz-upload")
    return SeriesFiles(path.read_bytes() for path in paths)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    database = redis.Redis.from_url(SERVICE_REDIS_URL, decode_responses=True)
    database.flushdb()
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("fuzz-gateway") / "data",
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_upload_files=MAX_UPLOAD_FILES,
    )
    with TestClient(create_app(settings), raise_server_exceptions=True) as client:
        yield Gateway(client, settings, database)
    database.flushdb()


def _reset(gateway: Gateway) -> None:
    """Empty the job store, the queue and the input folders, so each example starts alike."""
    gateway.redis.flushdb()
    for child in gateway.settings.inputs_dir.iterdir():
        shutil.rmtree(child)


@dataclass(frozen=True)
class Sent:
    """What one example sent: the route, the body's media type and the files inside the body."""

    route: str
    media_type: str
    payloads: Sequence[bytes]


def _post(gateway: Gateway, sent: Sent, **request: Any) -> GuardedResult:
    _reset(gateway)
    return guarded_call(lambda: gateway.client.post(sent.route, **request), limit_s=REQUEST_TIME_LIMIT_S)


# ---------------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------------


def _check_error_body(status: int, body: Any, sent: Sent) -> None:
    assert set(body) == {"error"}, f"HTTP {status} body {body!r} is not {{'error': {{code, message}}}}"
    assert set(body["error"]) == {"code", "message"}, f"error body {body!r}"
    code, message = body["error"]["code"], body["error"]["message"]
    assert isinstance(code, str), f"error code {code!r} is not a string"
    assert code, "error code is empty"
    assert isinstance(message, str), f"error message {message!r} is not a string"
    assert message, "error message is empty"
    assert code in CODES_BY_STATUS.get(status, {code}), f"HTTP {status} carries code {code!r}"
    event(f"{sent.route} {status} {code}")


def _check_success_body(status: int, body: dict[str, Any], sent: Sent) -> int:
    """Check a store or upload response and return the number of jobs it created."""
    jobs = body.get("jobs")
    assert isinstance(jobs, list), f"body {body!r} has no job list"
    if sent.route == "/dicomweb/studies":
        assert "00081190" in body, f"store response {body!r} has no Retrieve URL"
        assert ("00081199" in body) == (status != 409), f"HTTP {status} and Referenced SOP Sequence disagree"
        assert ("00081198" in body) == (status != 200), f"HTTP {status} and Failed SOP Sequence disagree"
        created = sum(1 for job in jobs if job["created"])
    else:
        assert set(body) == {"stored", "jobs", "failed"}, f"upload body {body!r}"
        assert body["stored"] >= 1, f"upload body {body!r} stored nothing"
        assert jobs, f"upload body {body!r} lists no job"
        created = sum(1 for job in jobs if job["created"])
        assert (status == 201) == (created > 0), f"HTTP {status} with {created} new jobs"
    event(f"{sent.route} {status}")
    return created


def _check_exchange(gateway: Gateway, sent: Sent, result: GuardedResult) -> None:
    """Assert the route contract for one request (see the module docstring)."""
    settings = gateway.settings
    assert result.elapsed_s <= REQUEST_TIME_LIMIT_S, f"request took {result.elapsed_s:.1f} s"
    assert result.peak_bytes <= REQUEST_MEMORY_LIMIT_BYTES, f"request allocated {result.peak_bytes / 1024**2:.0f} MiB"
    leftovers = sorted(str(path.relative_to(settings.incoming_dir)) for path in settings.incoming_dir.rglob("*"))
    assert not leftovers, f"the incoming folder still contains {leftovers}"

    assert result.error is None, f"the app raised {type(result.error).__name__}: {result.error}"
    response = result.value
    allowed = STOW_STATUSES if sent.route == "/dicomweb/studies" else UPLOAD_STATUSES
    assert response.status_code in allowed, f"HTTP {response.status_code}: {response.text[:500]}"
    body = response.json()
    assert isinstance(body, dict), f"body {body!r} is not a JSON object"
    created = 0
    if response.status_code >= 400 and response.status_code != 409:
        _check_error_body(response.status_code, body, sent)
    else:
        created = _check_success_body(response.status_code, body, sent)

    assert gateway.redis.llen("sats") == created, f"{gateway.redis.llen('sats')} tasks queued, {created} jobs new"
    total = gateway.client.get("/v1/jobs", headers=AUTH).json()["total"]
    assert total == created, f"{total} job records for {created} new jobs"
    input_folders = list(settings.inputs_dir.iterdir())
    assert len(input_folders) == created, f"{len(input_folders)} input folders for {created} new jobs"


# ---------------------------------------------------------------------------------------------
# Part contents
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    """The content of one part or file: a valid slice, a cut slice, random bytes or nothing.

    ``index`` picks the slice and ``data`` contains the random bytes. ``cut`` is the number
    of bytes kept of a cut slice (modulo its length).
    """

    kind: str
    index: int = 0
    cut: int = 0
    data: bytes = b""

    def resolve(self, slices: Sequence[bytes]) -> bytes:
        chosen = slices[self.index % len(slices)]
        if self.kind == "slice":
            return chosen
        if self.kind == "cut_slice":
            return chosen[: self.cut % len(chosen)]
        return self.data


# Valid slices come from two branches, so that more requests get past ingest and create jobs.
_PAYLOAD = st.one_of(
    st.builds(Payload, kind=st.just("slice"), index=st.integers(0, 2)),
    st.builds(Payload, kind=st.just("slice"), index=st.integers(0, 2)),
    st.builds(Payload, kind=st.just("cut_slice"), index=st.integers(0, 2), cut=st.integers(0, 4096)),
    st.builds(Payload, kind=st.just("random"), data=st.binary(max_size=512)),
    st.just(Payload("empty")),
)

# Header values as a sender can put them on the wire: printable Latin-1, no CR or LF.
_HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)
_HEADER_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789", min_size=1, max_size=20)

_BOUNDARY = st.one_of(
    st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=70),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=80),
)


# ---------------------------------------------------------------------------------------------
# Multipart bodies
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One body part: its header lines (name, value or None for the computed Content-Length) and content."""

    headers: tuple[tuple[str, str | None], ...]
    payload: Payload


@dataclass(frozen=True)
class MultipartBody:
    """A multipart body and how it is framed, damaged or labelled."""

    boundary: str
    header_boundary: str
    content_type: str
    parts: tuple[Part, ...]
    preamble: bytes
    epilogue: bytes
    closed: bool
    line_end: bytes
    truncate_at: int | None

    def encode(self, slices: Sequence[bytes]) -> tuple[bytes, list[bytes]]:
        """Return the body bytes and the content of each part."""
        boundary = self.boundary.encode("latin-1")
        end = self.line_end
        contents = [part.payload.resolve(slices) for part in self.parts]
        chunks = [self.preamble]
        for index, (part, content) in enumerate(zip(self.parts, contents, strict=True)):
            chunks.append((end if index or self.preamble else b"") + b"--" + boundary + end)
            for name, value in part.headers:
                text = str(len(content)) if value is None else value
                chunks.append(f"{name}: {text}".encode("latin-1") + end)
            chunks.append(end + content)
        if self.closed:
            chunks.append(end + b"--" + boundary + b"--" + end + self.epilogue)
        body = b"".join(chunks)
        if self.truncate_at is not None:
            body = body[: self.truncate_at % (len(body) + 1)]
        return body, contents


_RELATED_PART_HEADERS = st.lists(
    st.one_of(
        st.tuples(
            st.just("Content-Type"),
            st.one_of(
                st.sampled_from(
                    [
                        "application/dicom",
                        "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
                        "Application/DICOM",
                        "application/octet-stream",
                        "text/plain",
                        "",
                    ]
                ),
                _HEADER_TEXT,
            ),
        ),
        st.tuples(st.just("Content-Length"), st.one_of(st.none(), st.sampled_from(["0", "1", "-1", "abc", "1e3"]))),
        st.tuples(
            st.just("Content-Transfer-Encoding"),
            st.one_of(st.sampled_from(["binary", "8bit", "7bit", "base64", "quoted-printable"]), _HEADER_TEXT),
        ),
        st.tuples(_HEADER_NAME, _HEADER_TEXT),
    ),
    max_size=4,
)

# Three parts in four carry a Content-Type that STOW-RS accepts, so that examples get past it.
_DICOM_PART_HEADERS = st.one_of(
    st.just([("Content-Type", "application/dicom")]),
    st.just([("Content-Type", "application/dicom")]),
    st.just([("Content-Type", "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"), ("Content-Length", None)]),
    _RELATED_PART_HEADERS,
).map(tuple)


def _form_headers(field: str, filename: str | None) -> tuple[tuple[str, str | None], ...]:
    disposition = f'form-data; name="{field}"' + ("" if filename is None else f'; filename="{filename}"')
    return (("Content-Disposition", disposition), ("Content-Type", "application/dicom"))


_FORM_PART_HEADERS = st.one_of(
    st.builds(_form_headers, field=_HEADER_NAME, filename=st.one_of(st.none(), _HEADER_NAME)),
    _RELATED_PART_HEADERS.map(tuple),
)

_RELATED_CONTENT_TYPES = [
    'multipart/related; type="application/dicom"; boundary={boundary}',
    'multipart/related; type="application/dicom"; boundary="{boundary}"',
    "multipart/related; boundary={boundary}",
    "multipart/related; type=application/dicom; boundary={boundary}",
    'multipart/related; type="application/dicom+xml"; boundary={boundary}',
    "multipart/related",
    "application/dicom",
    "",
]

_FORM_CONTENT_TYPES = [
    "multipart/form-data; boundary={boundary}",
    'multipart/form-data; boundary="{boundary}"',
    "multipart/form-data",
    "multipart/mixed; boundary={boundary}",
]


@st.composite
def _multipart_bodies(
    draw: st.DrawFn, content_types: Sequence[str], part_headers: st.SearchStrategy[tuple[tuple[str, str | None], ...]]
) -> MultipartBody:
    parts = draw(st.lists(st.builds(Part, headers=part_headers, payload=_PAYLOAD), max_size=MAX_UPLOAD_FILES + 2))
    if draw(st.booleans()):
        # Well framed, so that the parts themselves are what varies and some requests succeed.
        boundary = draw(st.text(alphabet="0123456789abcdef", min_size=8, max_size=40))
        return MultipartBody(
            boundary=boundary,
            header_boundary=boundary,
            content_type=content_types[0].replace("{boundary}", boundary),
            parts=tuple(parts),
            preamble=b"",
            epilogue=b"",
            closed=True,
            line_end=b"\r\n",
            truncate_at=None,
        )
    boundary = draw(_BOUNDARY)
    header_boundary = draw(st.one_of(st.just(boundary), _BOUNDARY))
    template = draw(st.one_of(st.sampled_from(content_types), _HEADER_TEXT))
    return MultipartBody(
        boundary=boundary,
        header_boundary=header_boundary,
        content_type=template.replace("{boundary}", header_boundary),
        parts=tuple(parts),
        preamble=draw(st.one_of(st.just(b""), st.binary(max_size=40))),
        epilogue=draw(st.one_of(st.just(b""), st.binary(max_size=40))),
        closed=draw(st.booleans()),
        line_end=draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"])),
        truncate_at=draw(st.one_of(st.none(), st.integers(0, MAX_UPLOAD_BYTES))),
    )


def _content_type_header(content_type: str) -> dict[str, bytes]:
    return {"Content-Type": content_type.encode("latin-1")} if content_type else {}


@settings(FUZZ_SETTINGS, max_examples=scaled_examples(400))
@seed(20240614)
@given(message=_multipart_bodies(_RELATED_CONTENT_TYPES, _DICOM_PART_HEADERS))
def test_stow_random_multipart_keeps_contract(gateway, slices, message):
    body, contents = message.encode(slices)
    sent = Sent("/dicomweb/studies", "multipart/related", contents)
    headers = {**AUTH, **_content_type_header(message.content_type)}
    _check_exchange(gateway, sent, _post(gateway, sent, content=body, headers=headers))


@settings(FUZZ_SETTINGS, max_examples=scaled_examples(200))
@seed(20240615)
@given(message=_multipart_bodies(_FORM_CONTENT_TYPES, _FORM_PART_HEADERS))
def test_upload_random_form_body_keeps_contract(gateway, slices, message):
    body, contents = message.encode(slices)
    sent = Sent("/v1/studies", message.content_type.split(";")[0].strip().lower(), contents)
    headers = {**AUTH, **_content_type_header(message.content_type)}
    _check_exchange(gateway, sent, _post(gateway, sent, content=body, headers=headers))


# ---------------------------------------------------------------------------------------------
# Well-formed form-data uploads with random names and contents
# ---------------------------------------------------------------------------------------------


_FILE_NAME = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=60),
    st.sampled_from(["../../etc/passwd", "/abs/path.dcm", "C:\\x.dcm", "..", ".", "a" * 300, "ct.zip"]),
)


@dataclass(frozen=True)
class FormFile:
    """One file field of a form-data upload."""

    field: str
    filename: str
    payload: Payload
    as_zip: bool


@settings(FUZZ_SETTINGS, max_examples=scaled_examples(150))
@seed(20240616)
@given(
    files=st.lists(
        st.builds(
            FormFile,
            field=st.text(max_size=20),
            filename=_FILE_NAME,
            payload=_PAYLOAD,
            as_zip=st.booleans(),
        ),
        min_size=1,
        max_size=MAX_UPLOAD_FILES + 2,
    )
)
def test_upload_form_files_keep_contract(gateway, slices, files):
    fields, contents = [], []
    for item in files:
        content = item.payload.resolve(slices)
        contents.append(content)
        if item.as_zip:
            content = _zip_bytes([("member.dcm", content)], zipfile.ZIP_DEFLATED)
        fields.append((item.field, (item.filename, content, "application/octet-stream")))
    sent = Sent("/v1/studies", "multipart/form-data", contents)
    _check_exchange(gateway, sent, _post(gateway, sent, files=fields, headers=AUTH))


# ---------------------------------------------------------------------------------------------
# Zip archives: damaged bytes, and real archives with random member names
# ---------------------------------------------------------------------------------------------


def _zip_bytes(members: Sequence[tuple[str, bytes]], compression: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in members:
            archive.writestr(zipfile.ZipInfo(name), content, compress_type=compression)
    return buffer.getvalue()


def _series_zip(slices: Sequence[bytes], compression: int) -> bytes:
    return _zip_bytes([(f"ct/{k:02d}.dcm", blob) for k, blob in enumerate(slices)], compression)


def _with_empty_member_name(archive: bytes) -> bytes:
    """Return a copy of a one-member zip whose central directory names the member ""."""
    data = bytearray(archive)
    central = data.rfind(b"PK\x01\x02")
    end = data.rfind(b"PK\x05\x06")
    name_length = struct.unpack_from("<H", data, central + 28)[0]
    struct.pack_into("<H", data, central + 28, 0)
    del data[central + 46 : central + 46 + name_length]
    end -= name_length
    directory_size = struct.unpack_from("<I", data, end + 12)[0]
    struct.pack_into("<I", data, end + 12, directory_size - name_length)
    return bytes(data)


_COMPRESSION = st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])


@dataclass(frozen=True)
class ZipDamage:
    """A series zip with bytes overwritten, a tail cut off, or its flag, method or name fields changed."""

    compression: int
    overwrites: tuple[tuple[int, bytes], ...]
    cut: int | None
    field_edit: str | None

    def apply(self, slices: Sequence[bytes]) -> bytes:
        archive = _series_zip(slices, self.compression)
        if self.field_edit == "empty_name":
            archive = _with_empty_member_name(_zip_bytes([("ct.dcm", slices[0])], self.compression))
        data = bytearray(archive)
        central = data.find(b"PK\x01\x02")
        if self.field_edit == "encrypted":
            data[central + 8] |= 0x01  # general purpose flag bit 0 of the first member
        elif self.field_edit == "method":
            struct.pack_into("<H", data, central + 10, 99)  # compression method of the first member
        for offset, replacement in self.overwrites:
            start = offset % len(data)
            data[start : start + len(replacement)] = replacement
        if self.cut is not None:
            del data[self.cut % len(data) :]
        return bytes(data)


@settings(FUZZ_SETTINGS, max_examples=scaled_examples(200))
@seed(20240617)
@given(
    damage=st.builds(
        ZipDamage,
        compression=_COMPRESSION,
        overwrites=st.lists(st.tuples(st.integers(0, 8192), st.binary(min_size=1, max_size=4)), max_size=3).map(tuple),
        cut=st.one_of(st.none(), st.integers(0, 8192)),
        field_edit=st.sampled_from([None, None, "encrypted", "method", "empty_name"]),
    ),
    random_body=st.one_of(st.none(), st.binary(max_size=512).map(lambda tail: b"PK\x03\x04" + tail)),
    media_type=st.sampled_from(["application/zip", "application/dicom"]),
)
def test_upload_damaged_zip_keeps_contract(gateway, slices, damage, random_body, media_type):
    body = damage.apply(slices) if random_body is None else random_body
    sent = Sent("/v1/studies", media_type, [body, *slices])
    headers = {**AUTH, "Content-Type": media_type}
    _check_exchange(gateway, sent, _post(gateway, sent, content=body, headers=headers))


_MEMBER_NAME = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=40),
    st.lists(st.sampled_from(["a", "b", "..", ".", "", "ct", "é", "\\", " "]), min_size=1, max_size=6).map("/".join),
    st.sampled_from(
        ["../evil.dcm", "/abs.dcm", "C:\\x.dcm", "c:x.dcm", "a/../../b", "\\..\\x", "x" * 300, "d/" * 60 + "f"]
    ),
)


def _unsafe(name: str) -> bool:
    """Return whether the zip rule of worker.inputs rejects ``name``: absolute, drive letter or '..'."""
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or bool(path.parts and ":" in path.parts[0]) or ".." in path.parts


@settings(FUZZ_SETTINGS, max_examples=scaled_examples(200))
@seed(20240618)
@given(
    members=st.lists(st.tuples(_MEMBER_NAME, _PAYLOAD), min_size=1, max_size=MAX_UPLOAD_FILES + 2),
    compression=_COMPRESSION,
    in_form=st.booleans(),
)
def test_upload_zip_member_names_keep_contract(gateway, slices, members, compression, in_form):
    resolved = [(name, payload.resolve(slices)) for name, payload in members]
    archive = _zip_bytes(resolved, compression)
    if in_form:
        sent = Sent("/v1/studies", "multipart/form-data", [content for _, content in resolved])
        result = _post(gateway, sent, files={"archive": ("ct.zip", archive, "application/zip")}, headers=AUTH)
    else:
        sent = Sent("/v1/studies", "application/zip", [content for _, content in resolved])
        result = _post(gateway, sent, content=archive, headers={**AUTH, "Content-Type": "application/zip"})
    _check_exchange(gateway, sent, result)

    # Every unsafe name is rejected before anything is extracted, unless a size limit fires first.
    files = [name for name, _ in resolved if not name.endswith("/")]
    if result.error is None and any(_unsafe(name) for name in files) and result.value.status_code != 413:
        assert result.value.status_code == 400, f"unsafe member names {files} got HTTP {result.value.status_code}"
        assert result.value.json()["error"]["code"] == "input.zip_unsafe"


# ---------------------------------------------------------------------------------------------
# Cases that fuzzing found, one minimal reproducer each
# ---------------------------------------------------------------------------------------------


def _post_zip(gateway: Gateway, archive: bytes) -> GuardedResult:
    sent = Sent("/v1/studies", "application/zip", [archive])
    return _post(gateway, sent, content=archive, headers={**AUTH, "Content-Type": "application/zip"})


def _assert_zip_rejected(gateway: Gateway, result: GuardedResult) -> None:
    assert result.error is None, f"the app raised {type(result.error).__name__}: {result.error}"
    assert result.value.status_code == 400, result.value.text
    assert result.value.json()["error"]["code"].startswith("input.zip_")
    assert not any(gateway.settings.incoming_dir.iterdir())


@pytest.mark.parametrize(
    "names", [["x" * 300], ["a", "a/b"], ["a/b", "a"]], ids=["name-300-bytes", "file-then-folder", "folder-then-file"]
)
def test_zip_member_path_error_rejected(gateway, slices, names):
    archive = _zip_bytes([(name, slices[0]) for name in names], zipfile.ZIP_STORED)
    _assert_zip_rejected(gateway, _post_zip(gateway, archive))


@pytest.mark.parametrize("field_edit", ["encrypted", "method"])
def test_zip_member_unreadable_rejected(gateway, slices, field_edit):
    archive = ZipDamage(zipfile.ZIP_STORED, (), None, field_edit).apply(slices)
    _assert_zip_rejected(gateway, _post_zip(gateway, archive))


def test_zip_corrupt_deflate_stream_rejected(gateway, slices):
    archive = bytearray(_zip_bytes([("ct.dcm", slices[0])], zipfile.ZIP_DEFLATED))
    data_start = 30 + len("ct.dcm")  # local file header, then the member name
    archive[data_start : data_start + 4] = b"\xff\xff\xff\xff"
    _assert_zip_rejected(gateway, _post_zip(gateway, bytes(archive)))


def test_zip_empty_member_name_rejected(gateway, slices):
    archive = _with_empty_member_name(_zip_bytes([("ct.dcm", slices[0])], zipfile.ZIP_STORED))
    _assert_zip_rejected(gateway, _post_zip(gateway, archive))


def test_zip_duplicate_member_names_handled(gateway, slices):
    archive = _zip_bytes([("0", slices[0]), ("0", slices[1])], zipfile.ZIP_STORED)
    result = _post_zip(gateway, archive)
    assert result.error is None, f"the app raised {type(result.error).__name__}: {result.error}"
    assert result.value.status_code in {201, 400}, result.value.text


def test_form_without_boundary_gets_error_body(gateway):
    sent = Sent("/v1/studies", "multipart/form-data", [])
    result = _post(gateway, sent, content=b"garbage", headers={**AUTH, "Content-Type": "multipart/form-data"})
    body = result.value.json()
    assert result.value.status_code == 400
    assert set(body) == {"error"}, f"body {body!r} is not {{'error': {{code, message}}}}"
    assert body["error"]["code"].startswith("upload.")


def test_form_with_too_many_files_413(gateway, slices):
    files = [("files", (f"{k}.dcm", slices[0], "application/dicom")) for k in range(MAX_UPLOAD_FILES + 1)]
    result = _post(gateway, Sent("/v1/studies", "multipart/form-data", []), files=files, headers=AUTH)
    assert result.value.status_code == 413
    assert result.value.json()["error"]["code"] == "upload.too_many_files"


def test_stow_part_with_huge_length_field_small_allocation(gateway):
    # SOPClassUID (0008,0016) in implicit VR declaring 0x44000000 bytes (1 GiB); the part is 24 bytes.
    part = b"\x08\x00\x16\x00" + struct.pack("<I", 0x44000000) + b"1.2.840.10008.5.1"
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n--b--\r\n"
    sent = Sent("/dicomweb/studies", "multipart/related", [part])
    headers = {**AUTH, "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}
    result = _post(gateway, sent, content=body, headers=headers)
    assert result.value.status_code == 409
    assert result.peak_bytes < 16 * 1024**2, f"allocated {result.peak_bytes / 1024**2:.0f} MiB"

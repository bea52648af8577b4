"""DICOMweb helpers of the gateway: STOW-RS bodies in, store responses and WADO-RS bodies out.

STOW-RS (DICOM PS3.18 section 10.5) sends instances as a ``multipart/related`` body
(RFC 2046 section 5.1, RFC 2387) with one PS3.10 file per part. This module streams such
a body to disk, builds the Store Instances Response Module in the DICOM JSON model
(PS3.18 annex F and annex I), and writes ``multipart/related`` bodies for WADO-RS. It uses
pydicom but never torch, because the gateway imports it.
"""

from __future__ import annotations

import logging
import re
import secrets
import struct
from collections.abc import AsyncIterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import anyio.to_thread
from pydicom import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from model.errors import InputError
from worker.dicom_read import TruncatedElementError, read_dicom

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

logger = logging.getLogger(__name__)

#: Media type of one PS3.10 file (PS3.18 section 8.7.3.5).
DICOM_MEDIA_TYPE = "application/dicom"

#: Size of the reads when a WADO-RS body streams files from disk (1 MiB).
READ_CHUNK_BYTES = 1024 * 1024

#: Maximum boundary length in characters (RFC 2046 section 5.1.1).
MAX_BOUNDARY_LENGTH = 70

# A boundary as a sender may write it: printable ASCII that does not end in a space. This
# is wider than the RFC 2046 character set so that lax clients are still understood.
_RECEIVED_BOUNDARY = re.compile(r"[\x20-\x7e]*[\x21-\x7e]")

# The RFC 2046 ``bchars`` set, used for boundaries that this module writes.
_WRITTEN_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]*[0-9A-Za-z'()+_,\-./:=?]")

# The value of a Content-Length header: ASCII decimal digits only.
_DECIMAL_DIGITS = re.compile(r"[0-9]+")

# RFC 2045 ``tspecials`` (and space): a parameter value containing one must be quoted.
_TSPECIALS = frozenset('()<>@,;:\\"/[]?= ')

# Content-Transfer-Encoding values that leave the bytes of a part unchanged (RFC 2045).
_IDENTITY_TRANSFER_ENCODINGS = frozenset({"binary", "8bit", "7bit"})

# Errors that mark a file as unreadable DICOM: pydicom's own errors and the built-in errors
# its readers raise on corrupt lengths and values. BytesLengthException, NotImplementedError
# and struct.error were seen when pydicom 3.0.2 read randomly damaged files with force=True.
# Other exceptions, OSError included, propagate.
_UNREADABLE_DICOM_ERRORS = (
    InvalidDicomError,
    TruncatedElementError,
    BytesLengthException,
    EOFError,
    NotImplementedError,
    OverflowError,
    KeyError,
    TypeError,
    ValueError,
    struct.error,
)


class UploadTooLarge(InputError):  # noqa: N818 (name used by the gateway's STOW-RS route)
    """The request body exceeds a size or file-count limit; the gateway returns HTTP 413."""

    code = "upload.too_large"


@dataclass(frozen=True)
class UploadLimits:
    """Limits that :func:`receive_multipart_related` enforces while the body streams in.

    Attributes
    ----------
    max_bytes
        Maximum request body size in bytes, counting every byte received (part headers,
        boundaries, preamble and epilogue included).
    max_files
        Maximum number of parts in one request.
    """

    max_bytes: int
    max_files: int

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {self.max_bytes!r}")
        if self.max_files < 1:
            raise ValueError(f"max_files must be at least 1, got {self.max_files!r}")


@dataclass(frozen=True)
class ReceivedFile:
    """One part of a STOW-RS body, stored as a file.

    Attributes
    ----------
    path
        The file, named ``part-NNNNN.dcm`` with the 1-based part number.
    size
        Bytes of part data in the file.
    content_type
        The part's Content-Type header as sent, parameters included
        (for example ``application/dicom; transfer-syntax=1.2.840.10008.1.2.1``).
    """

    path: Path
    size: int
    content_type: str


def _boundary_problem(boundary: str, pattern: re.Pattern[str]) -> str | None:
    """Return why ``boundary`` is unusable, or None when ``pattern`` and the length accept it."""
    if not boundary:
        return "the boundary is empty"
    if len(boundary) > MAX_BOUNDARY_LENGTH:
        return f"the boundary has {len(boundary)} characters, more than the {MAX_BOUNDARY_LENGTH} that RFC 2046 allows"
    if pattern.fullmatch(boundary) is None:
        return f"the boundary {boundary!r} contains characters that RFC 2046 does not allow"
    return None


def parse_related_content_type(header: str) -> str:
    """Check the Content-Type header of a STOW-RS request and return its boundary.

    Parameters
    ----------
    header
        The Content-Type header value, for example
        ``multipart/related; type="application/dicom"; boundary=abc``. Parameter values
        may be quoted or not, and the ``type`` parameter may be missing.

    Returns
    -------
    str
        The boundary, without quotes.

    Raises
    ------
    InputError
        Code ``upload.bad_content_type`` if the media type is not ``multipart/related``
        or the boundary is missing or invalid. Code ``upload.unsupported_media_type`` if a
        ``type`` parameter names anything other than ``application/dicom``.

    Notes
    -----
    PS3.18 section 8.7.3.5.1 requires the ``type`` parameter, but some clients leave it
    out, so a missing ``type`` is accepted and each part's own Content-Type is checked.
    """
    media_type, parameters = parse_options_header(header)
    if media_type != b"multipart/related":
        raise InputError(
            f"Content-Type {header!r} is not multipart/related; send STOW-RS requests as "
            f'multipart/related; type="{DICOM_MEDIA_TYPE}"; boundary=...',
            code="upload.bad_content_type",
        )

    part_type = parameters.get(b"type")
    if part_type is not None and part_type.strip().lower() != DICOM_MEDIA_TYPE.encode():
        raise InputError(
            f"Content-Type {header!r} declares parts of type {part_type.decode('latin-1')!r}; "
            f"this service stores only {DICOM_MEDIA_TYPE} parts",
            code="upload.unsupported_media_type",
        )

    boundary_bytes = parameters.get(b"boundary")
    if boundary_bytes is None:
        raise InputError(
            f"Content-Type {header!r} has no boundary parameter; add boundary=... naming the "
            "delimiter used in the body",
            code="upload.bad_content_type",
        )
    boundary = boundary_bytes.decode("latin-1")
    problem = _boundary_problem(boundary, _RECEIVED_BOUNDARY)
    if problem is not None:
        raise InputError(f"Content-Type {header!r} is invalid: {problem}", code="upload.bad_content_type")
    return boundary


class _MultipartReceiver:
    """Writes the parts of one ``multipart/related`` body to files as its bytes arrive.

    The :class:`MultipartParser` callbacks below run inside :meth:`feed`. An error raised
    in a callback propagates out of :meth:`feed`, and the caller then calls :meth:`discard`.
    """

    def __init__(self, boundary: str, folder: Path, limits: UploadLimits) -> None:
        self._boundary = boundary
        self._folder = folder
        self._limits = limits
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")

        self._received_bytes = 0
        self._saw_content = False
        # Bytes before the first delimiter (the preamble), with a leading CRLF so that a
        # body starting with the delimiter is found as well. None once the delimiter is found.
        self._preamble_tail: bytearray | None = bytearray(b"\r\n")
        self._ended = False

        self._part_count = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._part_headers: dict[str, str] = {}
        self._part_file: BinaryIO | None = None
        self._part_size = 0
        self._written: list[Path] = []
        self.files: list[ReceivedFile] = []

        callbacks: MultipartCallbacks = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }
        self._parser = MultipartParser(boundary, callbacks)

    def feed(self, chunk: bytes) -> None:
        """Count, parse and store the next chunk of the body."""
        self._received_bytes += len(chunk)
        if self._received_bytes > self._limits.max_bytes:
            raise UploadTooLarge(
                f"Request body exceeds the limit of {self._limits.max_bytes} bytes; "
                "send the instances in several smaller requests"
            )

        if self._preamble_tail is not None:
            chunk = self._skip_preamble(self._preamble_tail, chunk)
        if chunk:
            try:
                self._parser.write(chunk)
            except MultipartParseError as error:
                raise InputError(
                    f"Request body is not valid multipart/related: {error}", code="upload.malformed"
                ) from error

    def _skip_preamble(self, preamble_tail: bytearray, chunk: bytes) -> bytes:
        """Return the part of ``chunk`` from the first delimiter on, or b"" while none was found.

        python-multipart 0.0.34 expects the body to start with the delimiter, but RFC 2046
        allows a preamble before it, so the preamble is dropped here.
        """
        if chunk.strip():
            self._saw_content = True
        preamble_tail += chunk

        start = preamble_tail.find(self._delimiter)
        if start == -1:
            # Keep only bytes that may begin a delimiter completed by the next chunk.
            del preamble_tail[: -(len(self._delimiter) - 1)]
            return b""

        # Hand the parser the delimiter without its leading CRLF, as a body would start.
        remainder = bytes(preamble_tail[start + 2 :])
        self._preamble_tail = None
        return remainder

    def finish(self) -> list[ReceivedFile]:
        """Check that the body was complete and return the stored parts in body order."""
        if self._preamble_tail is not None:
            if not self._saw_content:
                raise InputError("Request body is empty; send at least one application/dicom part", code="upload.empty")
            raise InputError(
                f"Request body contains no delimiter line for boundary {self._boundary!r}; check that "
                "the boundary in the Content-Type header matches the one used in the body",
                code="upload.malformed",
            )
        if not self._ended:
            raise InputError(
                f"Request body ended before the closing delimiter --{self._boundary}--; the upload "
                "was cut off, so send it again",
                code="upload.truncated",
            )
        if not self.files:
            raise InputError(
                "Request body contains no parts; send at least one application/dicom part", code="upload.empty"
            )

        logger.debug("received %d parts (%d bytes) into %s", len(self.files), self._received_bytes, self._folder)
        return self.files

    def discard(self) -> None:
        """Close the open part and delete every file written for this body."""
        if self._part_file is not None:
            self._part_file.close()
            self._part_file = None
        for path in self._written:
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                logger.warning("could not delete %s after a failed upload: %s", path, error)
        self._written.clear()
        self.files.clear()

    def _on_part_begin(self) -> None:
        self._part_count += 1
        if self._part_count > self._limits.max_files:
            raise UploadTooLarge(
                f"Request contains more than {self._limits.max_files} parts; send at most "
                f"{self._limits.max_files} instances per request",
                code="upload.too_many_files",
            )
        self._part_headers = {}
        self._part_size = 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._header_name.decode("latin-1").strip().lower()
        self._part_headers[name] = self._header_value.decode("latin-1").strip()
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        self._check_part_headers()
        temporary_path = self._folder / f"part-{self._part_count:05d}.dcm.tmp"
        self._written.append(temporary_path)
        self._part_file = temporary_path.open("xb")

    def _check_part_headers(self) -> None:
        """Raise InputError unless the current part is an application/dicom part in binary form."""
        content_type = self._part_headers.get("content-type")
        if content_type is None:
            raise InputError(
                f"Part {self._part_count} has no Content-Type header; send each part as {DICOM_MEDIA_TYPE}",
                code="upload.unsupported_media_type",
            )
        media_type, _ = parse_options_header(content_type)
        if media_type != DICOM_MEDIA_TYPE.encode():
            raise InputError(
                f"Part {self._part_count} has Content-Type {content_type!r}; this service stores only "
                f"{DICOM_MEDIA_TYPE} parts",
                code="upload.unsupported_media_type",
            )

        transfer_encoding = self._part_headers.get("content-transfer-encoding", "binary").lower()
        if transfer_encoding not in _IDENTITY_TRANSFER_ENCODINGS:
            raise InputError(
                f"Part {self._part_count} has Content-Transfer-Encoding {transfer_encoding!r}; send the "
                "DICOM file as binary",
                code="upload.unsupported_transfer_encoding",
            )

        content_length = self._part_headers.get("content-length")
        if content_length is not None and _DECIMAL_DIGITS.fullmatch(content_length) is None:
            raise InputError(
                f"Part {self._part_count} has Content-Length {content_length!r}, which is not a number of bytes",
                code="upload.malformed",
            )

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        assert self._part_file is not None
        self._part_file.write(memoryview(data)[start:end])
        self._part_size += end - start

    def _on_part_end(self) -> None:
        assert self._part_file is not None
        self._part_file.close()
        self._part_file = None

        content_length = self._part_headers.get("content-length")
        if content_length is not None and int(content_length) != self._part_size:
            raise InputError(
                f"Part {self._part_count} declares Content-Length {content_length} but contains "
                f"{self._part_size} bytes",
                code="upload.malformed",
            )

        temporary_path = self._written[-1]
        final_path = temporary_path.with_suffix("")
        temporary_path.rename(final_path)
        self._written.append(final_path)
        self.files.append(ReceivedFile(final_path, self._part_size, self._part_headers["content-type"]))

    def _on_end(self) -> None:
        self._ended = True


async def receive_multipart_related(
    chunks: AsyncIterable[bytes], boundary: str, folder: Path, limits: UploadLimits
) -> list[ReceivedFile]:
    """Stream a STOW-RS ``multipart/related`` body to one file per part.

    Each part is written to ``folder/part-NNNNN.dcm.tmp`` as its bytes arrive and renamed
    to ``folder/part-NNNNN.dcm`` (1-based part number) once the part is complete, so no
    part is ever held in memory whole. File writes run in a worker thread, off the event
    loop. A preamble before the first delimiter and an epilogue after the last are ignored.

    Parameters
    ----------
    chunks
        The request body, for example Starlette's ``request.stream()``.
    boundary
        The boundary from :func:`parse_related_content_type`.
    folder
        An existing, empty directory that belongs to this request.
    limits
        Size and part-count limits, enforced while the body streams in.

    Returns
    -------
    list of ReceivedFile
        The parts in body order.

    Raises
    ------
    UploadTooLarge
        Code ``upload.too_large`` once more than ``limits.max_bytes`` bytes have arrived,
        code ``upload.too_many_files`` when part ``limits.max_files + 1`` begins.
    InputError
        With one of these codes:

        - ``upload.unsupported_media_type``: a part's Content-Type is missing or is not
          ``application/dicom``.
        - ``upload.unsupported_transfer_encoding``: a part is in base64 or quoted-printable.
        - ``upload.empty``: the body contains no parts.
        - ``upload.truncated``: the body ends before its closing delimiter.
        - ``upload.malformed``: any other syntax error, such as a part whose size differs
          from its Content-Length.
    ValueError
        If ``boundary`` is invalid or ``folder`` is not an empty directory.

    Notes
    -----
    On any exception, including cancellation and an error raised by ``chunks``, every file
    already written for this body is deleted before the exception propagates, so
    ``folder`` is empty again.

    NOTE: python-multipart 0.0.34 rejects spaces between the boundary and the CRLF on the
    first delimiter line (RFC 2046 transport padding), so such a body gets
    ``upload.malformed``. Padding on later delimiter lines is accepted.
    """
    problem = _boundary_problem(boundary, _RECEIVED_BOUNDARY)
    if problem is not None:
        raise ValueError(f"boundary {boundary!r} is invalid: {problem}")
    if not folder.is_dir():
        raise ValueError(f"folder {str(folder)!r} is not a directory; create it before receiving a body")
    if any(folder.iterdir()):
        raise ValueError(f"folder {str(folder)!r} is not empty; receive each body into a new folder")

    receiver = _MultipartReceiver(boundary, folder, limits)
    try:
        async for chunk in chunks:
            if chunk:
                # The worker thread finishes its chunk before a cancellation is delivered
                # here, so discard() never races with a write.
                await anyio.to_thread.run_sync(receiver.feed, chunk)
        return receiver.finish()
    except BaseException:
        receiver.discard()
        raise


def multipart_related_body(paths: Sequence[Path], boundary: str | None = None) -> tuple[Iterator[bytes], str]:
    """Build a WADO-RS ``multipart/related`` body with one ``application/dicom`` part per file.

    Parameters
    ----------
    paths
        PS3.10 files, sent in this order.
    boundary
        Boundary to use; by default a random 32-digit hexadecimal string. It must not
        occur in the files, which a random boundary makes practically certain.

    Returns
    -------
    body : iterator of bytes
        The body, framed as in RFC 2046 section 5.1.1 with CRLF line ends. Files are
        read lazily in chunks of at most :data:`READ_CHUNK_BYTES`.
    content_type : str
        The Content-Type header value,
        ``multipart/related; type="application/dicom"; boundary=...``.

    Raises
    ------
    ValueError
        If ``paths`` is empty (RFC 2046 requires at least one part) or ``boundary`` is
        not a valid RFC 2046 boundary.
    FileNotFoundError
        If a path is not a regular file when this function is called.

    Notes
    -----
    The files are checked here but read only while the body is iterated, so a file
    deleted in between raises FileNotFoundError from the iterator.
    """
    if not paths:
        raise ValueError("paths is empty; a multipart body needs at least one part")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"cannot send {str(path)!r}: it is not a file")
    if boundary is None:
        boundary = secrets.token_hex(16)
    problem = _boundary_problem(boundary, _WRITTEN_BOUNDARY)
    if problem is not None:
        raise ValueError(f"boundary {boundary!r} is invalid: {problem}")

    boundary_parameter = f'"{boundary}"' if _TSPECIALS.intersection(boundary) else boundary
    content_type = f'multipart/related; type="{DICOM_MEDIA_TYPE}"; boundary={boundary_parameter}'
    return _iter_multipart_body(list(paths), boundary.encode("ascii")), content_type


def _iter_multipart_body(paths: list[Path], boundary: bytes) -> Iterator[bytes]:
    part_headers = b"Content-Type: " + DICOM_MEDIA_TYPE.encode() + b"\r\n\r\n"
    for index, path in enumerate(paths):
        # The CRLF before each later delimiter belongs to the delimiter, not to the file.
        delimiter = b"--" + boundary if index == 0 else b"\r\n--" + boundary
        yield delimiter + b"\r\n" + part_headers
        with path.open("rb") as file:
            while chunk := file.read(READ_CHUNK_BYTES):
                yield chunk
    yield b"\r\n--" + boundary + b"--\r\n"


def read_header(path: Path) -> Dataset | None:
    """Read the data elements of a received file up to, not including, the pixel data.

    Parameters
    ----------
    path
        A received file.

    Returns
    -------
    pydicom.Dataset or None
        The header, or None if the file cannot be read as DICOM or lacks a SOP Class UID
        or SOP Instance UID. The reason for None is logged as a warning.

    Raises
    ------
    OSError
        If the file cannot be opened.

    Notes
    -----
    The file is read with ``force=True``, so a data set without the PS3.10 preamble and
    File Meta Information is accepted too.
    """
    try:
        dataset = read_dicom(path, stop_before_pixels=True)
        sop_class_uid = dataset.get("SOPClassUID")
        sop_instance_uid = dataset.get("SOPInstanceUID")
    except _UNREADABLE_DICOM_ERRORS as error:
        logger.warning("%s is not a readable DICOM file: %s: %s", path, type(error).__name__, error)
        return None

    if not isinstance(sop_class_uid, str) or not sop_class_uid.strip():
        logger.warning("%s is not a DICOM instance: SOPClassUID is missing", path)
        return None
    if not isinstance(sop_instance_uid, str) or not sop_instance_uid.strip():
        logger.warning("%s is not a DICOM instance: SOPInstanceUID is missing", path)
        return None
    return dataset

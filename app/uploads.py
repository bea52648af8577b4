"""Receive request bodies to disk under the request's own folder, within the configured limits.

Every body is written under ``incoming/{request id}/``, which is deleted when the request
ends. Files that become job inputs are moved out of it first (see :mod:`app.ingest`), so
nothing of a failed or rejected request stays behind.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.types import Message

from app.dicomweb import UploadLimits, UploadTooLarge, parse_related_content_type, receive_multipart_related
from app.settings import Settings
from model.errors import InputError
from worker.inputs import extract_zip

logger = logging.getLogger(__name__)

_COPY_CHUNK = 1024 * 1024


@contextlib.asynccontextmanager
async def request_folder(settings: Settings) -> AsyncIterator[Path]:
    """Yield a new folder for one request's files and delete it afterwards."""
    folder = settings.incoming_dir / uuid.uuid4().hex
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))


def _check_declared_length(request: Request, settings: Settings) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise UploadTooLarge(
            f"request body of {int(declared)} bytes exceeds the limit of {settings.max_upload_bytes} bytes "
            "(SATS_MAX_UPLOAD_BYTES)",
            code="upload.too_large",
        )


def _limited(request: Request, settings: Settings) -> Request:
    """Return ``request`` with a body stream that raises once the size limit is passed."""
    received = 0
    receive = request.receive

    async def counting_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > settings.max_upload_bytes:
                raise UploadTooLarge(
                    f"request body exceeds the limit of {settings.max_upload_bytes} bytes (SATS_MAX_UPLOAD_BYTES)",
                    code="upload.too_large",
                )
        return message

    return Request(request.scope, counting_receive)


async def _save(upload: UploadFile, target: Path) -> None:
    with target.open("wb") as sink:
        while chunk := await upload.read(_COPY_CHUNK):
            await anyio.to_thread.run_sync(sink.write, chunk)


async def _stream_body(request: Request, target: Path) -> None:
    with target.open("wb") as sink:
        async for chunk in request.stream():
            await anyio.to_thread.run_sync(sink.write, chunk)


def _expand_zips(files: list[Path], folder: Path, settings: Settings) -> list[Path]:
    """Replace each zip archive in ``files`` by the files it contains (checked, see :func:`extract_zip`)."""
    expanded: list[Path] = []
    for index, path in enumerate(files):
        if zipfile.is_zipfile(path):
            target = folder / f"zip-{index:05d}"
            expanded += extract_zip(path, target, settings.max_upload_files, settings.max_upload_bytes)
            path.unlink()
        else:
            expanded.append(path)
    if len(expanded) > settings.max_upload_files:
        raise UploadTooLarge(
            f"upload contains {len(expanded)} files, more than the limit of {settings.max_upload_files} "
            "(SATS_MAX_UPLOAD_FILES)",
            code="upload.too_many_files",
        )
    return expanded


@contextlib.asynccontextmanager
async def receive_upload(request: Request, settings: Settings) -> AsyncIterator[list[Path]]:
    """Receive a plain upload and yield its files (zip archives expanded).

    Accepted bodies: ``multipart/form-data`` with any number of file fields (any field
    name), ``application/zip`` or ``application/dicom``.

    Raises
    ------
    InputError
        ``upload.empty`` (400), ``upload.unsupported_media_type`` (415), ``upload.too_large``
        or ``upload.too_many_files`` (413), and the zip codes of :func:`extract_zip`.
    """
    _check_declared_length(request, settings)
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    async with request_folder(settings) as folder:
        files: list[Path] = []
        limited = _limited(request, settings)
        if media_type == "multipart/form-data":
            try:
                form = await limited.form(max_files=settings.max_upload_files, max_fields=100)
            except (MultiPartException, HTTPException) as error:
                # Starlette raises MultiPartException outside an app and HTTPException(400) inside one.
                reason = error.detail if isinstance(error, HTTPException) else error.message
                if "Too many files" in reason:
                    raise UploadTooLarge(
                        f"upload has more than {settings.max_upload_files} files (SATS_MAX_UPLOAD_FILES)",
                        code="upload.too_many_files",
                    ) from error
                raise InputError(f"invalid multipart/form-data body: {reason}", code="upload.malformed") from error
            try:
                uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
                for index, upload in enumerate(uploads):
                    target = folder / f"file-{index:05d}"
                    await _save(upload, target)
                    files.append(target)
            finally:
                await form.close()
        elif media_type in ("application/zip", "application/dicom"):
            target = folder / ("body.zip" if media_type == "application/zip" else "body.dcm")
            await _stream_body(limited, target)
            files.append(target)
        else:
            raise InputError(
                f"unsupported Content-Type {media_type or 'none'!r}; send multipart/form-data, application/zip "
                "or application/dicom (or use STOW-RS at /dicomweb/studies)",
                code="upload.unsupported_media_type",
            )
        files = [path for path in files if path.stat().st_size > 0]
        if not files:
            raise InputError("the upload contains no file, or only empty files", code="upload.empty")
        yield await anyio.to_thread.run_sync(_expand_zips, files, folder, settings)


@contextlib.asynccontextmanager
async def receive_stow(request: Request, settings: Settings) -> AsyncIterator[list[Path]]:
    """Receive a STOW-RS ``multipart/related`` body and yield one file per part."""
    _check_declared_length(request, settings)
    boundary = parse_related_content_type(request.headers.get("content-type", ""))
    limits = UploadLimits(max_bytes=settings.max_upload_bytes, max_files=settings.max_upload_files)
    async with request_folder(settings) as folder:
        received = await receive_multipart_related(request.stream(), boundary, folder, limits)
        yield [item.path for item in received]

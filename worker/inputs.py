"""Input locations for a job: a folder of DICOM files, or a zip archive of one."""

from __future__ import annotations

import errno
import lzma
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from model.errors import InputError

#: Maximum number of files in one zip archive.
MAX_ZIP_ENTRIES = 20_000

#: Maximum total size of the files in a zip archive once extracted (8 GiB, about 16,000 CT slices of
#: 512 x 512 x 16 bit), a guard against archives that expand without bound.
MAX_ZIP_BYTES = 8 * 1024**3


#: Maximum length of one name component in bytes, the limit of common Linux file systems.
MAX_NAME_BYTES = 255


def _check_entry(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise InputError(f"zip entry {name!r} has an absolute path; archives must be relative", code="input.zip_unsafe")
    if ".." in path.parts:
        raise InputError(f"zip entry {name!r} points outside the archive ('..')", code="input.zip_unsafe")
    return path


def extract_zip(
    archive: Path, destination: Path, max_entries: int = MAX_ZIP_ENTRIES, max_bytes: int = MAX_ZIP_BYTES
) -> list[Path]:
    """Extract ``archive`` into ``destination`` after checking every entry; return the files written.

    Raises
    ------
    InputError
        ``input.zip_invalid`` if it is not a readable zip file, ``input.zip_unsafe`` for an
        absolute or ``..`` path, ``input.zip_too_large`` past ``max_entries`` files or
        ``max_bytes`` extracted bytes (defaults :data:`MAX_ZIP_ENTRIES`, :data:`MAX_ZIP_BYTES`).
    """
    try:
        with zipfile.ZipFile(archive) as bundle:
            entries = [info for info in bundle.infolist() if not info.filename.endswith("/")]
            if len(entries) > max_entries:
                raise InputError(
                    f"zip archive has {len(entries)} files, more than the limit of {max_entries}",
                    code="input.zip_too_large",
                )
            total = sum(info.file_size for info in entries)
            if total > max_bytes:
                raise InputError(
                    f"zip archive expands to {total / 1024**2:.1f} MiB, more than the limit of "
                    f"{max_bytes / 1024**2:.0f} MiB",
                    code="input.zip_too_large",
                )
            paths = [_check_entry(info.filename) for info in entries]
            _check_names(paths)
            targets = [(info, destination.joinpath(*path.parts)) for info, path in zip(entries, paths, strict=True)]
            for info, target in targets:
                _extract_member(bundle, info, target)
            return [target for _, target in targets]
    except zipfile.BadZipFile as error:
        raise InputError(f"{archive} is not a valid zip archive: {error}", code="input.zip_invalid") from error


def _check_names(paths: list[PurePosixPath]) -> None:
    """Reject empty and over-long names, two entries of one path, and an entry that is also a folder."""
    for path in paths:
        if not path.parts:
            raise InputError("zip archive has an entry without a name", code="input.zip_invalid")
        if any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in path.parts):
            raise InputError(
                f"zip entry {str(path)[:60]!r}... has a name component over {MAX_NAME_BYTES} bytes",
                code="input.zip_invalid",
            )
    files = {path.parts for path in paths}
    if len(files) != len(paths):
        raise InputError("zip archive has two entries with the same path", code="input.zip_invalid")
    for parts in files:
        for end in range(1, len(parts)):
            if parts[:end] in files:
                raise InputError(
                    f"zip entry {'/'.join(parts[:end])!r} is both a file and a folder", code="input.zip_invalid"
                )


def _extract_member(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Write one member to ``target``; a member that cannot be read is invalid input."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with bundle.open(info) as source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink, length=1024 * 1024)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise  # the server's disk is full: not the sender's fault
        raise InputError(f"zip entry {info.filename!r} cannot be read: {error}", code="input.zip_invalid") from error
    except (RuntimeError, NotImplementedError, EOFError, zlib.error, lzma.LZMAError) as error:
        # Encrypted members, unknown compression methods and corrupt compressed data.
        raise InputError(f"zip entry {info.filename!r} cannot be read: {error}", code="input.zip_invalid") from error


@contextmanager
def input_folder(path: Path) -> Iterator[Path]:
    """Yield a folder of DICOM files for ``path``: the folder itself, or a zip extracted to a temporary folder.

    Raises
    ------
    InputError
        ``input.not_found`` if ``path`` does not exist; see :func:`extract_zip` for archives.
    """
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise InputError(
            f"input not found: {path}; give a folder of DICOM files or a zip of one", code="input.not_found"
        )
    if path.suffix.lower() != ".zip" and not zipfile.is_zipfile(path):
        raise InputError(
            f"input {path} is a file but not a zip archive; give a folder of DICOM files or a zip of one",
            code="input.not_a_folder",
        )
    with tempfile.TemporaryDirectory(prefix="sats-input-") as folder:
        extract_zip(path, Path(folder))
        yield Path(folder)

"""Reading DICOM files whose length fields cannot be trusted.

pydicom reads an element by asking the file for the element's declared length, and Python
allocates a buffer of the asked size before it finds out how many bytes remain. A damaged or
hostile file of a few bytes can declare 4 GiB. :func:`read_dicom` bounds every read by the
bytes left in the file and never reads a deferred value that runs past the end of the file.

The gateway (which never imports torch) and the series reader both use it; it imports only
pydicom.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

#: Values longer than this (bytes) stay in the file until they are used.
DEFER_SIZE = 1024

PIXEL_DATA_TAG = 0x7FE00010


class TruncatedElementError(ValueError):
    """An element's declared length runs past the end of its file."""


class _BoundedReader(io.BufferedReader):
    """A buffered file whose reads never ask for more bytes than the file has left."""

    def __init__(self, raw: io.FileIO, size: int) -> None:
        super().__init__(raw, buffer_size=65536)
        self._size = size

    def read(self, size: int | None = -1, /) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(0, self._size - self.tell()))
        return super().read(size)


def read_dicom(path: Path, *, stop_before_pixels: bool = False, allow_truncated_pixels: bool = False) -> Dataset:
    """Read ``path`` with ``force=True`` and values over :data:`DEFER_SIZE` bytes deferred.

    Parameters
    ----------
    path
        The file.
    stop_before_pixels
        Stop at the pixel data element.
    allow_truncated_pixels
        Accept pixel data that the header declares longer than the file, so that the caller
        can reject the slice by name. The value is then never read in full.

    Raises
    ------
    TruncatedElementError
        If a deferred element runs past the end of the file.
    Exception
        Whatever pydicom raises on bytes that are not DICOM: it raises many types.
    """
    size = path.stat().st_size
    with open(path, "rb", buffering=0) as raw, _BoundedReader(raw, size) as stream, warnings.catch_warnings():
        # force=True makes pydicom guess at non-DICOM bytes and warn about it.
        warnings.simplefilter("ignore", UserWarning)
        dataset = pydicom.dcmread(stream, force=True, defer_size=DEFER_SIZE, stop_before_pixels=stop_before_pixels)
    # Iterating the data set itself would read the deferred values; its tags do not.
    for tag in list(dataset.keys()):
        element = dataset.get_item(tag, keep_deferred=True)
        if not isinstance(element, RawDataElement) or element.value is not None:
            continue  # already in memory
        if int(element.value_tell) + int(element.length) > size:
            if tag == PIXEL_DATA_TAG and allow_truncated_pixels:
                continue
            raise TruncatedElementError(
                f"element {tag} declares {element.length} bytes at offset {element.value_tell}, "
                f"but the file has {size} bytes"
            )
    return dataset

"""Reading DICOM files whose length fields cannot be trusted.

pydicom reads an element by asking the file for the element's declared length, and a
buffered file allocates a buffer of the asked size before it finds out how many bytes remain.
A damaged or hostile file of a few bytes can declare 4 GiB. :func:`read_dicom` reads through
a memory map, whose reads return at most the bytes left, and never reads a deferred value
that runs past the end of the file.

The gateway (which never imports torch) and the series reader both use it; it imports only
pydicom.
"""

from __future__ import annotations

import mmap
import warnings
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import VR

#: Values longer than this (bytes) stay in the file until they are used.
DEFER_SIZE = 1024

PIXEL_DATA_TAG = 0x7FE00010

#: Value representations whose bytes pydicom can fail to convert: numbers whose length is
#: not a multiple of the value size, and sequences with corrupt items. Text values are decoded
#: with replacement characters and are left for when they are used.
_RISKY_VRS = frozenset({"SQ", "US", "SS", "UL", "SL", "FL", "FD", "AT", "SV", "UV", "US or SS", "US or SS or OW"})
_KNOWN_VRS = frozenset(vr.value for vr in VR)


class TruncatedElementError(ValueError):
    """An element's declared length runs past the end of its file."""


class _FileLikeMap(mmap.mmap):
    """A read-only memory map that lets a reader seek past its end, as a file does.

    pydicom skips a deferred value by seeking past it, so a value that runs past the end of
    the file would otherwise raise. Reads after the end return no bytes.
    """

    def seek(self, pos: int, whence: int = 0, /) -> None:
        start = {0: 0, 1: self.tell(), 2: len(self)}[whence]
        super().seek(min(max(start + pos, 0), len(self)))


def _value_representation(element: RawDataElement) -> str | None:
    """Return the VR of a raw element, from the dictionary for implicit VR; None if not known."""
    if element.VR is not None:
        return str(element.VR)
    try:
        return str(dictionary_VR(element.tag))
    except KeyError:
        return None


def read_dicom(
    path: Path,
    *,
    stop_before_pixels: bool = False,
    allow_truncated_pixels: bool = False,
    convert_risky: bool = False,
) -> Dataset:
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
    convert_risky
        Convert now the elements that pydicom could fail to convert (see :data:`_RISKY_VRS`,
        and any element whose VR is not known), so that a corrupt value raises here instead
        of in a later stage.

    Raises
    ------
    TruncatedElementError
        If a deferred element runs past the end of the file.
    Exception
        Whatever pydicom raises on bytes that are not DICOM: it raises many types.
    """
    size = path.stat().st_size
    if size == 0:
        raise InvalidDicomError(f"{path.name} is empty")
    with (
        open(path, "rb") as file,
        _FileLikeMap(file.fileno(), 0, access=mmap.ACCESS_READ) as view,
        warnings.catch_warnings(),
    ):
        # force=True makes pydicom guess at non-DICOM bytes and warn about it.
        warnings.simplefilter("ignore", UserWarning)
        # A memory map has the read, seek and tell methods that pydicom uses.
        dataset = pydicom.dcmread(
            view,  # type: ignore[arg-type]
            force=True,
            defer_size=DEFER_SIZE,
            stop_before_pixels=stop_before_pixels,
        )
    # Deferred values are read later by opening the file again, as for a data set read by name.
    dataset.filename = str(path)
    dataset.fileobj_type = open
    dataset.buffer = None
    # Iterating the data set itself would read the deferred values; its tags do not.
    for tag in list(dataset.keys()):
        element = dataset.get_item(tag, keep_deferred=True)
        if not isinstance(element, RawDataElement):
            continue  # already converted
        if element.value is not None:
            vr = _value_representation(element)
            if convert_risky and (vr is None or vr in _RISKY_VRS or vr not in _KNOWN_VRS):
                dataset[tag]  # convert now
            continue
        if int(element.value_tell) + int(element.length) > size:
            if tag == PIXEL_DATA_TAG and allow_truncated_pixels:
                continue
            raise TruncatedElementError(
                f"element {tag} declares {element.length} bytes at offset {element.value_tell}, "
                f"but the file has {size} bytes"
            )
    return dataset

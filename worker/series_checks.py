"""Checks of a CT series' headers and geometry, applied before any pixel is decoded.

Each check raises :class:`model.errors.InputError` with a stable ``series.*`` code that
names the slice (SOP Instance UID) and the values involved. :mod:`worker.series` documents
the rules.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from model.errors import InputError
from worker.dicom_read import PIXEL_DATA_TAG

#: Multi-frame CT SOP classes, rejected by name until they are supported.
ENHANCED_CT_STORAGES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}

#: Largest in-plane offset (mm) between neighbouring slice origins that still counts as
#: an orthogonal stack. A gantry-tilted stack is sheared by step * tan(tilt).
MAX_SHEAR_MM = 0.01

#: Accepted deviation of a slice step from the median step: the larger of these two.
SPACING_TOLERANCE_MM = 0.01
SPACING_TOLERANCE_FRACTION = 0.01

#: Tolerance on the unit length and orthogonality of the ImageOrientationPatient vectors,
#: and on differences of orientation between slices.
ORIENTATION_TOLERANCE = 1e-3

#: Attributes every slice must have, because the geometry or the HU values depend on them.
GEOMETRY_TAGS = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "FrameOfReferenceUID",
    "RescaleSlope",
    "RescaleIntercept",
)

#: Attributes every slice must have, because its pixel values cannot be decoded without them.
PIXEL_TAGS = ("BitsAllocated", "BitsStored", "PixelRepresentation")

UNDEFINED_LENGTH = 0xFFFFFFFF

#: Attributes that must hold exactly one value.
SINGLE_VALUED_TAGS = (
    "Rows",
    "Columns",
    "RescaleSlope",
    "RescaleIntercept",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
)

#: Largest Rows or Columns accepted. Planning CTs have 512 or 1024; the cap bounds the
#: memory a header can claim before any pixel is decoded.
MAX_ROWS_COLUMNS = 4096

#: Number of values each multi-valued geometry attribute must have.
VECTOR_LENGTHS = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}


def values_of(dataset: Dataset, keyword: str) -> list[object]:
    """Return the values of ``keyword`` as a list: pydicom gives a bare value when there is one."""
    value = dataset.get(keyword)
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def orientation_of(dataset: Dataset) -> np.ndarray | None:
    """Return the six ImageOrientationPatient numbers, or None if there are not six numbers."""
    values = values_of(dataset, "ImageOrientationPatient")
    if len(values) != 6:
        return None
    try:
        return np.asarray([float(v) for v in values], dtype=np.float64)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def check_tags(datasets: Sequence[Dataset]) -> None:
    for dataset in datasets:
        sop_uid = dataset.get("SOPInstanceUID", "unknown")
        sop_class = str(dataset.get("SOPClassUID", ""))
        if sop_class in ENHANCED_CT_STORAGES:
            raise InputError(
                f"{ENHANCED_CT_STORAGES[sop_class]} (multi-frame) is not supported yet (SOP Instance UID "
                f"{sop_uid}); export the series as single-frame CT Image Storage",
                code="series.enhanced_ct_unsupported",
            )
        for keyword in GEOMETRY_TAGS:
            value = dataset.get(keyword)
            if value is None or value == "":
                raise InputError(
                    f"slice {sop_uid} has no {keyword}; the geometry cannot be trusted, so the series is rejected",
                    code="series.missing_tag",
                )
        for keyword in PIXEL_TAGS:
            if dataset.get(keyword) in (None, ""):
                raise InputError(
                    f"slice {sop_uid} has no {keyword}, so its pixel values cannot be decoded; the series is rejected",
                    code="series.missing_tag",
                )
        for keyword, length in VECTOR_LENGTHS.items():
            values = values_of(dataset, keyword)
            if len(values) != length:
                raise InputError(
                    f"slice {sop_uid} has {keyword} {[str(v) for v in values]}; expected {length} values",
                    code="series.invalid_tag",
                )
        for keyword in SINGLE_VALUED_TAGS:
            values = values_of(dataset, keyword)
            if len(values) > 1:
                raise InputError(
                    f"slice {sop_uid} has {keyword} {[str(v) for v in values]}; it must have one value",
                    code="series.invalid_tag",
                )
        _check_values(dataset, sop_uid)
        _check_transfer_syntax(dataset)
        photometric = str(dataset.get("PhotometricInterpretation", ""))
        if photometric != "MONOCHROME2" or int(dataset.get("SamplesPerPixel") or 1) != 1:
            raise InputError(
                f"slice {sop_uid} has PhotometricInterpretation {photometric!r} and SamplesPerPixel "
                f"{dataset.get('SamplesPerPixel')}; a CT must be MONOCHROME2 with 1 sample per pixel",
                code="series.unsupported_photometric",
            )


def _numbers(dataset: Dataset, keyword: str) -> list[float]:
    return [float(v) for v in values_of(dataset, keyword)]  # type: ignore[arg-type]


def _check_values(dataset: Dataset, sop_uid: object) -> None:
    """Reject geometry and rescale values that are not finite, and grids without voxels."""
    try:
        numbers = {
            keyword: _numbers(dataset, keyword)
            for keyword in (
                "ImagePositionPatient",
                "ImageOrientationPatient",
                "PixelSpacing",
                "RescaleSlope",
                "RescaleIntercept",
            )
        }
    except (TypeError, ValueError) as error:
        raise InputError(
            f"slice {sop_uid} has a geometry or rescale value that is not a number ({error})",
            code="series.invalid_tag",
        ) from error
    for keyword, values in numbers.items():
        if not all(math.isfinite(v) for v in values):
            raise InputError(
                f"slice {sop_uid} has {keyword} {values}; every value must be a finite number",
                code="series.invalid_tag",
            )
    if min(numbers["PixelSpacing"]) <= 0:
        raise InputError(
            f"slice {sop_uid} has PixelSpacing {numbers['PixelSpacing']}; spacing must be positive",
            code="series.invalid_tag",
        )
    slope = numbers["RescaleSlope"][0]
    if slope == 0 or abs(slope) > 1e6 or abs(numbers["RescaleIntercept"][0]) > 1e6:
        raise InputError(
            f"slice {sop_uid} has RescaleSlope {slope} and RescaleIntercept {numbers['RescaleIntercept'][0]}; "
            "a CT needs a non-zero slope and values that give HU",
            code="series.invalid_tag",
        )
    try:
        integers = {keyword: int(dataset.get(keyword)) for keyword in ("Rows", "Columns", "BitsAllocated")}
        if dataset.get("SamplesPerPixel") not in (None, ""):
            int(dataset.SamplesPerPixel)
    except (TypeError, ValueError) as error:
        raise InputError(
            f"slice {sop_uid} has Rows, Columns, BitsAllocated or SamplesPerPixel that is not a whole number ({error})",
            code="series.invalid_tag",
        ) from error
    if integers["Rows"] < 1 or integers["Columns"] < 1:
        raise InputError(
            f"slice {sop_uid} has {dataset.Rows} rows and {dataset.Columns} columns; an image needs at least one",
            code="series.invalid_tag",
        )


def _check_transfer_syntax(dataset: Dataset) -> None:
    meta = getattr(dataset, "file_meta", None)
    syntax_uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax_uid is None:
        return  # a bare data set: pydicom found implicit or explicit VR little or big endian
    syntax = UID(str(syntax_uid))
    if not syntax.is_transfer_syntax:
        raise InputError(
            f"slice {dataset.get('SOPInstanceUID')} names {syntax} as its transfer syntax, which is not a "
            "transfer syntax UID; the file meta information is corrupt, so send the file again",
            code="series.unsupported_transfer_syntax",
        )
    if not syntax.is_compressed:
        return
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise InputError(
            f"slice {dataset.get('SOPInstanceUID')} uses transfer syntax {syntax} ({syntax.name}), which this "
            "installation cannot decode; send it uncompressed or as JPEG lossless, JPEG 2000 or RLE",
            code="series.unsupported_transfer_syntax",
        )


def check_orientation(datasets: Sequence[Dataset]) -> np.ndarray:
    """Return the 3x3 direction matrix (columns: row, column, normal) shared by all slices."""
    first = orientation_of(datasets[0])
    first_uid = datasets[0].get("SOPInstanceUID")
    if first is None:
        raise InputError(f"slice {first_uid} has an invalid ImageOrientationPatient", code="series.invalid_tag")
    row, column = first[:3], first[3:]
    if (
        abs(np.linalg.norm(row) - 1) > ORIENTATION_TOLERANCE
        or abs(np.linalg.norm(column) - 1) > ORIENTATION_TOLERANCE
        or abs(float(row @ column)) > ORIENTATION_TOLERANCE
    ):
        raise InputError(
            f"ImageOrientationPatient {first.tolist()} of slice {first_uid} is not two orthogonal unit vectors",
            code="series.invalid_orientation",
        )
    for dataset in datasets[1:]:
        other = orientation_of(dataset)
        if other is None or np.abs(other - first).max() > ORIENTATION_TOLERANCE:
            raise InputError(
                f"slices have different ImageOrientationPatient: {first.tolist()} (slice {first_uid}) and "
                f"{None if other is None else other.tolist()} (slice {dataset.get('SOPInstanceUID')}); "
                "a series must have one orientation",
                code="series.inconsistent_orientation",
            )
    row = row / np.linalg.norm(row)
    column = column - (column @ row) * row
    column /= np.linalg.norm(column)
    return np.stack([row, column, np.cross(row, column)], axis=1)


def check_grid(datasets: Sequence[Dataset]) -> None:
    reference = datasets[0]
    for keyword in ("Rows", "Columns", "FrameOfReferenceUID", "StudyInstanceUID"):
        values = {str(d.get(keyword)) for d in datasets}
        if len(values) > 1:
            raise InputError(
                f"slices of one series have different {keyword}: {sorted(values)}", code="series.inconsistent_grid"
            )
    spacing = np.asarray([float(v) for v in reference.PixelSpacing])
    for dataset in datasets[1:]:
        other = np.asarray([float(v) for v in dataset.PixelSpacing])
        if np.abs(other - spacing).max() > 1e-4:
            raise InputError(
                f"slices have different PixelSpacing: {spacing.tolist()} and {other.tolist()} "
                f"(slice {dataset.get('SOPInstanceUID')})",
                code="series.inconsistent_grid",
            )


def stored_pixel_bytes(dataset: Dataset) -> int | None:
    """Return how many bytes of native pixel data the file holds, without reading them.

    None for encapsulated (compressed) pixel data, whose decoded size is known only after
    decoding. A value that the header declares longer than the file counts up to the end of
    the file.
    """
    meta = getattr(dataset, "file_meta", None)
    syntax_uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax_uid is not None and UID(str(syntax_uid)).is_encapsulated:
        return None
    element = dataset.get_item(PIXEL_DATA_TAG, keep_deferred=True)
    if element is None:
        return 0
    if not isinstance(element, RawDataElement):
        return len(element.value or b"")
    if element.length == UNDEFINED_LENGTH:
        return None
    length = int(element.length)
    filename = getattr(dataset, "filename", None)
    if element.value is None and isinstance(filename, str):  # deferred: the value is still in the file
        length = min(length, max(0, os.path.getsize(filename) - int(element.value_tell)))
    return length


def check_pixel_data(datasets: Sequence[Dataset]) -> None:
    """Check every slice's pixel data size before the volume is allocated.

    An uncompressed slice must hold Rows x Columns values of BitsAllocated bits. Rows and
    Columns are capped at :data:`MAX_ROWS_COLUMNS`, which bounds what compressed slices can
    claim.
    """
    for dataset in datasets:
        sop_uid = dataset.get("SOPInstanceUID", "unknown")
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        stored = stored_pixel_bytes(dataset)
        bits = int(dataset.BitsAllocated)
        if stored is not None and bits % 8 == 0:
            needed = rows * columns * (bits // 8)
            if stored < needed:
                raise InputError(
                    f"pixel data of slice {sop_uid} has {stored} bytes, but {rows} rows x {columns} columns x "
                    f"{bits} bits need {needed}; the file is truncated or its header is wrong, so the series is "
                    "rejected",
                    code="series.unreadable_slice",
                )
        if max(rows, columns) > MAX_ROWS_COLUMNS:
            raise InputError(
                f"slice {sop_uid} has {rows} rows and {columns} columns; at most {MAX_ROWS_COLUMNS} are supported",
                code="series.invalid_tag",
            )


def check_stack(datasets: Sequence[Dataset], direction: np.ndarray) -> tuple[np.ndarray, float]:
    """Check that slices step along the normal by one spacing; return positions and the step."""
    normal = direction[:, 2]
    positions = np.asarray([[float(v) for v in d.ImagePositionPatient] for d in datasets], dtype=np.float64)
    if len(positions) < 2:
        raise InputError(
            f"the series has {len(positions)} slice; at least 2 are needed for a volume", code="series.too_few_slices"
        )
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    in_plane = np.linalg.norm(steps - along[:, None] * normal[None, :], axis=1)
    worst = int(np.argmax(in_plane))
    if in_plane[worst] > MAX_SHEAR_MM:
        tilt = math.degrees(math.atan2(in_plane[worst], along[worst]))
        tag = datasets[0].get("GantryDetectorTilt")
        tag_text = f", GantryDetectorTilt {tag}" if tag not in (None, "") else ""
        raise InputError(
            f"the slices are sheared: neighbouring origins are offset by {in_plane[worst]:.2f} mm in plane, a "
            f"gantry tilt of {tilt:.1f} degrees{tag_text}. Gantry-tilted series are not supported because contours "
            "must lie on the acquired slices; reconstruct the planning CT without gantry tilt",
            code="series.gantry_tilt",
        )
    step = float(np.median(along))
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_FRACTION * step)
    bad = np.flatnonzero(np.abs(along - step) > tolerance)
    if len(bad):
        first = int(bad[0])
        low, high = positions[first], positions[first + 1]
        ratio = along[first] / step
        where = f"between slices at z = {low[2]:.2f} mm and z = {high[2]:.2f} mm"
        if round(ratio) >= 2 and abs(along[first] - round(ratio) * step) <= tolerance * round(ratio):
            raise InputError(
                f"{round(ratio) - 1} slice(s) missing {where} (step {along[first]:.3f} mm, regular step "
                f"{step:.3f} mm); send the complete series",
                code="series.missing_slices",
            )
        distinct = sorted({round(float(s), 3) for s in along})
        raise InputError(
            f"slice spacing is not uniform: step {along[first]:.3f} mm {where}, regular step {step:.3f} mm "
            f"({len(bad)} irregular step(s); steps found {distinct[:6]} mm). Send a series with uniform spacing",
            code="series.nonuniform_spacing",
        )
    return positions, step

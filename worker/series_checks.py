"""Checks of a CT series' headers and geometry, applied before any pixel is decoded.

Each check raises :class:`model.errors.InputError` with a stable ``series.*`` code that
names the slice (SOP Instance UID) and the values involved. :mod:`worker.series` documents
the rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from model.errors import InputError

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


def orientation_of(dataset: Dataset) -> np.ndarray | None:
    value = dataset.get("ImageOrientationPatient")
    if value is None or len(value) != 6:
        return None
    return np.asarray([float(v) for v in value], dtype=np.float64)


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
        if len(dataset.ImagePositionPatient) != 3 or len(dataset.PixelSpacing) != 2:
            raise InputError(
                f"slice {sop_uid} has ImagePositionPatient {list(dataset.ImagePositionPatient)} and PixelSpacing "
                f"{list(dataset.PixelSpacing)}; expected 3 and 2 values",
                code="series.invalid_tag",
            )
        _check_values(dataset, sop_uid)
        _check_transfer_syntax(dataset)
        photometric = str(dataset.get("PhotometricInterpretation", ""))
        if photometric != "MONOCHROME2" or int(dataset.get("SamplesPerPixel", 1)) != 1:
            raise InputError(
                f"slice {sop_uid} has PhotometricInterpretation {photometric!r} and SamplesPerPixel "
                f"{dataset.get('SamplesPerPixel')}; a CT must be MONOCHROME2 with 1 sample per pixel",
                code="series.unsupported_photometric",
            )


def _numbers(dataset: Dataset, keyword: str) -> list[float]:
    value = dataset.get(keyword)
    values = value if isinstance(value, Sequence) and not isinstance(value, str | bytes) else [value]
    return [float(v) for v in values]


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
    if int(dataset.Rows) < 1 or int(dataset.Columns) < 1:
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
        tag_text = f", GantryDetectorTilt {float(tag):g}" if tag not in (None, "") else ""
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

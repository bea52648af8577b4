"""Writing of CT Image Storage series: transfer syntaxes, character sets and the DCMTK encoders."""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.charset import convert_encodings, python_encoding
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import PersonName, format_number_as_ds

from model.errors import SATsError
from worker.synthetic_dicom.geometry import AXIAL_ORIENTATIONS, SeriesGeometry

logger = logging.getLogger(__name__)

#: Transfer syntaxes that :func:`write_ct_series` can write, all lossless.
SUPPORTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    RLELossless,
)

#: Transfer syntaxes a dataset without the Part 10 header may use (readers must guess it).
_UNCOMPRESSED = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian)

_INSTANCE_NUMBER_ORDERS = ("ascending", "reversed", "constant")
#: Fixed dates keep the files reproducible, because a phantom has no real acquisition time.
_STUDY_DATE = "20000101"
_STUDY_TIME = "120000"


class ExternalToolError(SATsError):
    """A command-line tool needed to encode DICOM is missing or failed."""

    code = "tool.failed"


@dataclass(frozen=True)
class _SeriesHeader:
    """Attributes that every slice of one written series shares."""

    geometry: SeriesGeometry
    patient_position: str
    patient_name: str
    character_set: tuple[str, ...]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    series_number: int
    bits_stored: int
    signed: bool
    rescale_slope_text: str
    uid_seed: str | None


def write_ct_series(
    volume_hu: npt.ArrayLike,
    geometry: SeriesGeometry,
    out_dir: str | Path,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    part10: bool = True,
    bits_stored: int = 12,
    signed: bool = False,
    rescale_intercept: float | Sequence[float] = -1024.0,
    rescale_slope: float = 1.0,
    patient_position: str | None = None,
    patient_name: str = "SATS^PHANTOM",
    character_set: str | Sequence[str] | None = "ISO_IR 192",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    uid_seed: str | None = None,
    series_number: int = 1,
    instance_number_order: str = "ascending",
    shuffle_names: bool = False,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Write a volume as a series of CT Image Storage files, one per slice.

    Parameters
    ----------
    volume_hu
        ``(D, H, W)`` HU values, integral after the rescale (see ``rescale_intercept``).
    geometry
        Grid of the volume. Slice ``k`` gets Image Position (Patient)
        ``geometry.image_position(k)``.
    out_dir
        Output folder, created if missing. It must be empty unless ``overwrite`` is set.
    transfer_syntax
        One of :data:`SUPPORTED_TRANSFER_SYNTAXES`. Big endian and JPEG Lossless SV1 are
        encoded with the DCMTK tools ``dcmconv`` and ``dcmcjpeg``, the others with pydicom.
    part10
        Write the 128-byte preamble and File Meta Information. ``False`` writes the bare
        dataset, which only the uncompressed transfer syntaxes allow.
    bits_stored, signed
        Bits Stored (12 or 16, always in 16 allocated bits) and Pixel Representation.
    rescale_intercept
        Rescale Intercept in HU, one value or one per slice. Stored values are
        ``(HU - intercept) / slope``.
    rescale_slope
        Rescale Slope.
    patient_position
        Patient Position written to the files, by default ``geometry.patient_position``.
        A different value gives a deliberately inconsistent header.
    patient_name, character_set
        Patient's Name and Specific Character Set. The character set is a term such as
        ``"ISO_IR 100"`` or a sequence of terms such as ``("", "ISO 2022 IR 87")`` for
        Japanese. ``None`` writes no Specific Character Set (ASCII only).
    study_instance_uid, series_instance_uid, frame_of_reference_uid
        UIDs to use. Those left as ``None`` are generated.
    uid_seed
        When given, generated UIDs are derived from it, so the output is reproducible.
        Otherwise they are random.
    series_number
        Series Number.
    instance_number_order
        ``"ascending"`` (Instance Number ``k + 1``), ``"reversed"`` (``D - k``) or
        ``"constant"`` (1 for every slice).
    shuffle_names
        Give the files names whose sorted order differs from the slice order.
    seed
        Seed of the name shuffle.
    overwrite
        Replace files of an earlier call with the same slice count and naming. Other
        files in ``out_dir`` still raise :class:`FileExistsError`.

    Returns
    -------
    list of pathlib.Path
        The written files. Element ``k`` contains slice ``k``.

    Raises
    ------
    ValueError
        If an argument is invalid or a HU value cannot be stored exactly.
    FileExistsError
        If ``out_dir`` contains files that this call would not replace.
    ExternalToolError
        If a DCMTK tool that the transfer syntax needs is missing or fails.
    """
    transfer_syntax = UID(transfer_syntax)
    _check_encoding(transfer_syntax, part10, geometry)
    if bits_stored not in (12, 16):
        raise ValueError(f"bits_stored must be 12 or 16, got {bits_stored!r}")
    if isinstance(series_number, bool) or not isinstance(series_number, int) or series_number < 0:
        raise ValueError(f"series_number must be a non-negative integer, got {series_number!r}")
    if instance_number_order not in _INSTANCE_NUMBER_ORDERS:
        raise ValueError(
            f"instance_number_order must be one of {_INSTANCE_NUMBER_ORDERS}, got {instance_number_order!r}"
        )
    position = geometry.patient_position if patient_position is None else patient_position
    if position not in AXIAL_ORIENTATIONS:
        raise ValueError(f"patient_position must be one of {sorted(AXIAL_ORIENTATIONS)}, got {position!r}")
    charset = _check_character_set(character_set, patient_name)
    intercept_texts = _intercept_texts(rescale_intercept, geometry.slices)
    slope_text = format_number_as_ds(float(rescale_slope))
    if not float(slope_text) > 0:
        raise ValueError(f"rescale_slope must be positive, got {rescale_slope!r}")
    stored = _stored_values(volume_hu, geometry, intercept_texts, float(slope_text), bits_stored, signed)
    tools = _dcmtk_tools(transfer_syntax)

    header = _SeriesHeader(
        geometry=geometry,
        patient_position=position,
        patient_name=patient_name,
        character_set=charset,
        study_instance_uid=study_instance_uid or _new_uid(uid_seed, "study"),
        series_instance_uid=series_instance_uid or _new_uid(uid_seed, "series"),
        frame_of_reference_uid=frame_of_reference_uid or _new_uid(uid_seed, "frame-of-reference"),
        series_number=series_number,
        bits_stored=bits_stored,
        signed=signed,
        rescale_slope_text=slope_text,
        uid_seed=uid_seed,
    )
    out = Path(out_dir)
    paths = [out / name for name in _file_names(geometry.slices, shuffle_names, seed)]
    _prepare_out_dir(out, paths, overwrite)

    instance_numbers = {
        "ascending": [k + 1 for k in range(geometry.slices)],
        "reversed": [geometry.slices - k for k in range(geometry.slices)],
        "constant": [1] * geometry.slices,
    }[instance_number_order]
    with tempfile.TemporaryDirectory(prefix="sats-dicom-") as scratch:
        for k, path in enumerate(paths):
            dataset = _slice_dataset(header, k, stored[k], intercept_texts[k], instance_numbers[k])
            _save(dataset, path, transfer_syntax, part10, tools, Path(scratch))
    logger.info(
        "wrote %d CT slices of series %s (%s) to %s",
        len(paths),
        header.series_instance_uid,
        transfer_syntax.name,
        out,
    )
    return paths


def _check_encoding(transfer_syntax: UID, part10: bool, geometry: SeriesGeometry) -> None:
    if transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        names = ", ".join(f"{uid} ({uid.name})" for uid in SUPPORTED_TRANSFER_SYNTAXES)
        raise ValueError(f"transfer_syntax {transfer_syntax!r} is not supported. Use one of {names}")
    if not part10 and transfer_syntax not in _UNCOMPRESSED:
        raise ValueError(
            f"part10=False needs an uncompressed transfer syntax, got {transfer_syntax.name}, "
            "because without File Meta Information a reader cannot tell which codec was used"
        )
    # pylibjpeg-openjpeg 2.6.0 fails to encode images with fewer than 32 rows or columns (tried 31 x 64).
    if transfer_syntax == JPEG2000Lossless and min(geometry.rows, geometry.columns) < 32:
        raise ValueError(
            f"JPEG 2000 encoding needs at least 32 rows and columns, got {geometry.rows} x {geometry.columns}"
        )


def _check_character_set(character_set: str | Sequence[str] | None, patient_name: str) -> tuple[str, ...]:
    """Return the Specific Character Set terms after checking that ``patient_name`` encodes in them."""
    if not isinstance(patient_name, str) or not patient_name:
        raise ValueError(f"patient_name must be a non-empty string, got {patient_name!r}")
    if character_set is None:
        terms: tuple[str, ...] = ()
    elif isinstance(character_set, str):
        terms = tuple(character_set.split("\\"))
    else:
        terms = tuple(character_set)
    unknown = [term for term in terms if term not in python_encoding]
    if unknown:
        raise ValueError(f"unknown Specific Character Set term(s) {unknown!r} in {character_set!r}")
    encodings = convert_encodings(list(terms) or ["ISO_IR 6"])
    try:
        with warnings.catch_warnings():
            # pydicom warns and substitutes '?' for characters that the encodings lack.
            warnings.simplefilter("error")
            encoded = PersonName(patient_name).encode(encodings)
        decoded = str(PersonName(encoded, encodings=encodings))
    except (UserWarning, UnicodeError, LookupError) as error:
        raise ValueError(
            f"patient_name {patient_name!r} cannot be encoded in character set {character_set!r}: {error}"
        ) from error
    if decoded != patient_name:
        raise ValueError(f"patient_name {patient_name!r} reads back as {decoded!r} in character set {character_set!r}")
    return terms


def _intercept_texts(rescale_intercept: float | Sequence[float], slices: int) -> list[str]:
    """Return the Rescale Intercept of each slice as the DS string that the files will contain."""
    if isinstance(rescale_intercept, int | float | np.number):
        values = [float(rescale_intercept)] * slices
    else:
        values = [float(v) for v in rescale_intercept]
    if len(values) != slices:
        raise ValueError(f"rescale_intercept must be one value or {slices} values (one per slice), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"rescale_intercept must be finite, got {rescale_intercept!r}")
    return [format_number_as_ds(float(v)) for v in values]


def _stored_values(
    volume_hu: npt.ArrayLike,
    geometry: SeriesGeometry,
    intercept_texts: Sequence[str],
    slope: float,
    bits_stored: int,
    signed: bool,
) -> npt.NDArray[np.int16] | npt.NDArray[np.uint16]:
    """Return ``(HU - intercept) / slope`` as ``(D, H, W)`` stored values, exactly or raise."""
    volume = np.asarray(volume_hu)
    if volume.dtype == np.bool_ or not np.issubdtype(volume.dtype, np.number):
        raise ValueError(f"volume_hu must hold numbers, got dtype {volume.dtype}")
    if np.iscomplexobj(volume):
        raise ValueError("volume_hu must be real, got complex values")
    if volume.shape != geometry.shape:
        raise ValueError(f"volume_hu has shape {volume.shape}, but the geometry is {geometry.shape} (D, H, W)")
    if not np.all(np.isfinite(volume)):
        raise ValueError("volume_hu contains NaN or infinite values")
    intercepts = np.array([float(text) for text in intercept_texts])[:, None, None]
    raw = (volume.astype(np.float64) - intercepts) / slope
    stored = np.round(raw)
    inexact = int(np.count_nonzero(np.abs(raw - stored) > 1e-6))
    if inexact:
        raise ValueError(
            f"{inexact} voxels of volume_hu are not integral after (HU - intercept) / slope with slope {slope:g}. "
            "Round the volume or choose an intercept and slope that map it onto integers"
        )
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    if stored.min() < low or stored.max() > high:
        kind = "signed" if signed else "unsigned"
        raise ValueError(
            f"stored values span {stored.min():g}..{stored.max():g}, outside the {bits_stored}-bit {kind} range "
            f"{low}..{high}. Change rescale_intercept, bits_stored or signed"
        )
    return stored.astype("<i2" if signed else "<u2")


def _dcmtk_tools(transfer_syntax: UID) -> dict[str, str]:
    """Return the paths of the DCMTK tools that ``transfer_syntax`` needs."""
    names = {ExplicitVRBigEndian: ["dcmconv"], JPEGLosslessSV1: ["dcmcjpeg"]}.get(transfer_syntax, [])
    tools = {}
    for name in names:
        path = shutil.which(name)
        if path is None:
            raise ExternalToolError(
                f"{name} was not found on PATH but is needed to write {transfer_syntax.name}. "
                "Install the Debian package dcmtk (apt-get install dcmtk)",
                code="tool.missing",
            )
        tools[name] = path
    return tools


def _new_uid(uid_seed: str | None, *parts: str) -> str:
    if uid_seed is None:
        return str(generate_uid())
    return str(generate_uid(entropy_srcs=[uid_seed, *parts]))


def _file_names(slices: int, shuffle: bool, seed: int) -> list[str]:
    numbers = np.arange(1, slices + 1)
    if shuffle:
        numbers = np.random.default_rng(seed).permutation(numbers)
        if slices > 1 and np.array_equal(numbers, np.sort(numbers)):
            numbers = numbers[::-1]  # a permutation that happens to be sorted would hide nothing
    return [f"CT{int(n):04d}.dcm" for n in numbers]


def _prepare_out_dir(out: Path, paths: Sequence[Path], overwrite: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    existing = {entry.name for entry in out.iterdir()}
    if not existing:
        return
    if not overwrite:
        raise FileExistsError(f"output folder {out} is not empty. Use an empty folder or overwrite=True")
    foreign = sorted(existing - {path.name for path in paths})
    if foreign:
        raise FileExistsError(
            f"output folder {out} contains {len(foreign)} file(s) that this series would not replace, "
            f"such as {foreign[0]!r}. Use an empty folder"
        )


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _slice_dataset(
    header: _SeriesHeader,
    k: int,
    stored: npt.NDArray[np.int16] | npt.NDArray[np.uint16],
    intercept_text: str,
    instance_number: int,
) -> Dataset:
    """Build the CT Image Storage dataset of slice ``k`` with uncompressed little-endian pixels."""
    geometry = header.geometry
    ds = Dataset()
    # SOP Common
    if header.character_set:
        ds.SpecificCharacterSet = list(header.character_set)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = _new_uid(header.uid_seed, header.series_instance_uid, "instance", str(k))

    # Patient, General Study
    ds.PatientName = header.patient_name
    ds.PatientID = "SATS-PHANTOM"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = header.study_instance_uid
    ds.StudyDate = _STUDY_DATE
    ds.StudyTime = _STUDY_TIME
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "SATs synthetic phantom"

    # General Series, Frame of Reference, General Equipment
    ds.Modality = "CT"
    ds.SeriesInstanceUID = header.series_instance_uid
    ds.SeriesNumber = header.series_number
    ds.SeriesDescription = "synthetic CT"
    ds.PatientPosition = header.patient_position
    ds.BodyPartExamined = "HEADNECK"  # an unpaired part, so Laterality is not required
    ds.FrameOfReferenceUID = header.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "SATs"
    ds.ManufacturerModelName = "synthetic phantom"

    # General Image, General Acquisition
    ds.InstanceNumber = instance_number
    ds.AcquisitionNumber = 1
    ds.ContentDate = _STUDY_DATE
    ds.ContentTime = _STUDY_TIME

    # Image Plane. Slice Location is the position along the slice normal.
    position = geometry.image_position(k)
    ds.PixelSpacing = [_ds(s) for s in geometry.pixel_spacing_mm]
    ds.ImageOrientationPatient = [_ds(v) for v in (*geometry.row_direction, *geometry.column_direction)]
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceThickness = _ds(geometry.slice_spacing_mm)
    ds.SpacingBetweenSlices = _ds(geometry.slice_spacing_mm)
    ds.SliceLocation = _ds(float(position @ geometry.normal))

    # CT Image, Image Pixel, VOI LUT
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP = "120"
    ds.GantryDetectorTilt = _ds(geometry.gantry_tilt_deg)
    ds.RescaleIntercept = intercept_text
    ds.RescaleSlope = header.rescale_slope_text
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = geometry.rows
    ds.Columns = geometry.columns
    ds.BitsAllocated = 16
    ds.BitsStored = header.bits_stored
    ds.HighBit = header.bits_stored - 1
    ds.PixelRepresentation = int(header.signed)
    ds.PixelData = stored.tobytes()  # little-endian int16 or uint16, rows of W values
    ds["PixelData"].VR = "OW"
    return ds


def _file_meta(ds: Dataset, transfer_syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    return meta


def _save(ds: Dataset, path: Path, transfer_syntax: UID, part10: bool, tools: dict[str, str], scratch: Path) -> None:
    """Write ``ds`` (uncompressed, little endian) to ``path`` in ``transfer_syntax``."""
    if transfer_syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        if part10:
            ds.file_meta = _file_meta(ds, transfer_syntax)
            ds.save_as(path, enforce_file_format=True)
        else:
            ds.save_as(path, implicit_vr=transfer_syntax.is_implicit_VR, little_endian=True)
        return
    ds.file_meta = _file_meta(ds, ExplicitVRLittleEndian)
    if transfer_syntax in (RLELossless, JPEG2000Lossless):
        ds.compress(transfer_syntax, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
        return
    source = scratch / path.name
    ds.save_as(source, enforce_file_format=True)
    if transfer_syntax == ExplicitVRBigEndian:
        arguments = [tools["dcmconv"], "--write-xfer-big"]
        if not part10:
            arguments.append("--write-dataset")
    else:
        arguments = [tools["dcmcjpeg"], "--encode-lossless-sv1", "--true-lossless"]
    _run_tool([*arguments, str(source), str(path)])
    source.unlink()


def _run_tool(arguments: list[str]) -> None:
    try:
        result = subprocess.run(arguments, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as error:
        raise ExternalToolError(f"{Path(arguments[0]).name} timed out after 60 s: {' '.join(arguments)}") from error
    if result.returncode != 0:
        raise ExternalToolError(
            f"{Path(arguments[0]).name} failed with exit status {result.returncode}: {result.stderr.strip()[-500:]}"
        )

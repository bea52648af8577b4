"""Grid geometry of a synthetic CT series in the DICOM patient frame (LPS, mm)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Vector = tuple[float, float, float]

#: Image Orientation (Patient) of an axial slice for each Patient Position, as scanners
#: write it: rows run along the gantry's horizontal axis, columns point down to the
#: table, and the slice normal is the gantry axis. Head first gives normal +z, feet first
#: gives -z. Decubitus left (DL) means the patient lies on the left side.
AXIAL_ORIENTATIONS: dict[str, tuple[Vector, Vector]] = {
    "HFS": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "FFS": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "HFP": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "FFP": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "HFDL": ((0.0, -1.0, 0.0), (1.0, 0.0, 0.0)),
    "HFDR": ((0.0, 1.0, 0.0), (-1.0, 0.0, 0.0)),
    "FFDL": ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0)),
    "FFDR": ((0.0, -1.0, 0.0), (-1.0, 0.0, 0.0)),
}

_DIRECTION_TOLERANCE = 1e-6
#: Bound on the gantry tilt, which keeps the shear tan(tilt) per slice below 1.
_MAX_GANTRY_TILT_DEG = 45.0


def _unit(vector: Sequence[float], name: str) -> Vector:
    values = tuple(float(v) for v in vector)
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be three finite numbers, got {vector!r}")
    length = math.sqrt(sum(v * v for v in values))
    if abs(length - 1.0) > _DIRECTION_TOLERANCE:
        raise ValueError(f"{name} must be a unit vector, got {vector!r} of length {length:.6g}")
    return (values[0], values[1], values[2])


@dataclass(frozen=True)
class SeriesGeometry:
    """Grid of a CT series in the patient frame (LPS, mm).

    Attributes
    ----------
    rows, columns, slices
        Grid size ``H``, ``W`` and ``D`` in voxels.
    pixel_spacing_mm
        Pixel Spacing in DICOM order: (distance between rows, distance between columns).
    slice_spacing_mm
        Distance between neighbouring image planes, measured along the slice normal.
    row_direction
        Image Orientation (Patient) values 1-3: unit vector along which the column index grows.
    column_direction
        Image Orientation (Patient) values 4-6: unit vector along which the row index grows.
    centre_lps_mm
        Patient position of the volume centre (mean of all voxel centres).
    gantry_tilt_deg
        Gantry Detector Tilt. When non-zero, the step between slice origins is
        ``slice_spacing_mm * (normal + tan(tilt) * column_direction)``, a sheared stack.
    slice_step_sign
        ``+1`` when slice ``k + 1`` lies further along the normal than slice ``k``, ``-1``
        when it lies the other way (a left-handed voxel grid).
    patient_position
        Patient Position code (``"HFS"``, ``"FFS"``, ...).
    """

    rows: int
    columns: int
    slices: int
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float
    row_direction: Vector
    column_direction: Vector
    centre_lps_mm: Vector = (0.0, 0.0, 0.0)
    gantry_tilt_deg: float = 0.0
    slice_step_sign: int = 1
    patient_position: str = "HFS"

    def __post_init__(self) -> None:
        for name in ("rows", "columns", "slices"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        spacing = tuple(float(s) for s in self.pixel_spacing_mm)
        if len(spacing) != 2 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"pixel_spacing_mm must be two positive numbers, got {self.pixel_spacing_mm!r}")
        if not (math.isfinite(self.slice_spacing_mm) and self.slice_spacing_mm > 0):
            raise ValueError(f"slice_spacing_mm must be positive, got {self.slice_spacing_mm!r}")

        row = _unit(self.row_direction, "row_direction")
        column = _unit(self.column_direction, "column_direction")
        if abs(float(np.dot(row, column))) > _DIRECTION_TOLERANCE:
            raise ValueError(f"row_direction {row} and column_direction {column} are not orthogonal")

        centre = tuple(float(c) for c in self.centre_lps_mm)
        if len(centre) != 3 or not all(math.isfinite(c) for c in centre):
            raise ValueError(f"centre_lps_mm must be three finite numbers, got {self.centre_lps_mm!r}")

        if not abs(self.gantry_tilt_deg) < _MAX_GANTRY_TILT_DEG:
            raise ValueError(
                f"gantry_tilt_deg must lie within ±{_MAX_GANTRY_TILT_DEG:g} degrees, got {self.gantry_tilt_deg!r}"
            )
        if self.slice_step_sign not in (1, -1):
            raise ValueError(f"slice_step_sign must be 1 or -1, got {self.slice_step_sign!r}")
        if self.patient_position not in AXIAL_ORIENTATIONS:
            raise ValueError(
                f"patient_position must be one of {sorted(AXIAL_ORIENTATIONS)}, got {self.patient_position!r}"
            )

        object.__setattr__(self, "pixel_spacing_mm", (spacing[0], spacing[1]))
        object.__setattr__(self, "slice_spacing_mm", float(self.slice_spacing_mm))
        object.__setattr__(self, "row_direction", row)
        object.__setattr__(self, "column_direction", column)
        object.__setattr__(self, "centre_lps_mm", (centre[0], centre[1], centre[2]))

    @classmethod
    def axial(
        cls,
        patient_position: str,
        *,
        rows: int,
        columns: int,
        slices: int,
        pixel_spacing_mm: tuple[float, float],
        slice_spacing_mm: float,
        centre_lps_mm: Vector = (0.0, 0.0, 0.0),
        gantry_tilt_deg: float = 0.0,
        slice_step_sign: int = 1,
    ) -> SeriesGeometry:
        """Create the axial geometry that a scanner writes for ``patient_position``.

        The orientation comes from :data:`AXIAL_ORIENTATIONS`. A gantry tilt turns the
        column direction about the row direction towards the gantry axis, so the image
        planes are tilted while the slice origins step along the gantry axis (patient
        z), as the table moves on a tilted scanner.
        """
        if patient_position not in AXIAL_ORIENTATIONS:
            raise ValueError(f"patient_position must be one of {sorted(AXIAL_ORIENTATIONS)}, got {patient_position!r}")
        row, column = (np.array(v) for v in AXIAL_ORIENTATIONS[patient_position])
        tilt = math.radians(gantry_tilt_deg)
        column = math.cos(tilt) * column + math.sin(tilt) * np.cross(row, column)
        return cls(
            rows=rows,
            columns=columns,
            slices=slices,
            pixel_spacing_mm=pixel_spacing_mm,
            slice_spacing_mm=slice_spacing_mm,
            row_direction=_clean_vector(row),
            column_direction=_clean_vector(column),
            centre_lps_mm=centre_lps_mm,
            gantry_tilt_deg=gantry_tilt_deg,
            slice_step_sign=slice_step_sign,
            patient_position=patient_position,
        )

    @classmethod
    def oblique(
        cls,
        angles_deg: tuple[float, float, float],
        *,
        rows: int,
        columns: int,
        slices: int,
        pixel_spacing_mm: tuple[float, float],
        slice_spacing_mm: float,
        centre_lps_mm: Vector = (0.0, 0.0, 0.0),
        patient_position: str = "HFS",
    ) -> SeriesGeometry:
        """Create an oblique geometry: the axial orientation of ``patient_position`` turned.

        ``angles_deg = (a, b, c)`` are right-handed rotations about the patient x, y and z
        axes, applied in that order (the rotation matrix is ``Rz(c) @ Ry(b) @ Rx(a)``).
        """
        if len(angles_deg) != 3 or not all(math.isfinite(a) for a in angles_deg):
            raise ValueError(f"angles_deg must be three finite angles in degrees, got {angles_deg!r}")
        if patient_position not in AXIAL_ORIENTATIONS:
            raise ValueError(f"patient_position must be one of {sorted(AXIAL_ORIENTATIONS)}, got {patient_position!r}")
        rotation = _rotation_xyz(*(math.radians(a) for a in angles_deg))
        row, column = (rotation @ np.array(v) for v in AXIAL_ORIENTATIONS[patient_position])
        return cls(
            rows=rows,
            columns=columns,
            slices=slices,
            pixel_spacing_mm=pixel_spacing_mm,
            slice_spacing_mm=slice_spacing_mm,
            row_direction=_clean_vector(row),
            column_direction=_clean_vector(column),
            centre_lps_mm=centre_lps_mm,
            patient_position=patient_position,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid size ``(D, H, W)``."""
        return (self.slices, self.rows, self.columns)

    @property
    def normal(self) -> FloatArray:
        """Slice normal ``row_direction x column_direction`` (LPS unit vector)."""
        return np.cross(self.row_direction, self.column_direction)

    @property
    def slice_step_mm(self) -> FloatArray:
        """Vector from the Image Position (Patient) of slice ``k`` to that of slice ``k + 1``."""
        shear = math.tan(math.radians(self.gantry_tilt_deg)) * np.asarray(self.column_direction)
        return self.slice_step_sign * self.slice_spacing_mm * (self.normal + shear)

    def index_to_patient(self, index_dhw: npt.ArrayLike) -> FloatArray:
        """Map continuous voxel indices ``(..., 3)`` in ``(D, H, W)`` order to LPS points in mm."""
        index = np.asarray(index_dhw, dtype=np.float64)
        if index.shape[-1:] != (3,):
            raise ValueError(f"index_dhw must have a last axis of length 3, got shape {index.shape}")
        # Columns of the affine in (D, H, W) order: slice step, row step, column step.
        axes = np.stack(
            [
                self.slice_step_mm,
                self.pixel_spacing_mm[0] * np.asarray(self.column_direction),
                self.pixel_spacing_mm[1] * np.asarray(self.row_direction),
            ],
            axis=1,
        )
        centre_index = (np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0
        return np.asarray(self.centre_lps_mm) + (index - centre_index) @ axes.T

    def image_position(self, k: int) -> FloatArray:
        """Image Position (Patient) of slice ``k``: the LPS centre of its first pixel, in mm."""
        if not 0 <= k < self.slices:
            raise IndexError(f"slice index {k} is outside 0..{self.slices - 1}")
        return self.index_to_patient([k, 0, 0])

    def voxel_centres_lps(self) -> FloatArray:
        """Return the LPS centre (mm) of every voxel as a ``(D, H, W, 3)`` float64 array."""
        index = np.moveaxis(np.indices(self.shape, dtype=np.float64), 0, -1)  # (3, D, H, W) -> (D, H, W, 3)
        return self.index_to_patient(index)


def _rotation_xyz(a: float, b: float, c: float) -> FloatArray:
    """Return ``Rz(c) @ Ry(b) @ Rx(a)`` for angles in radians (right-handed)."""
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _clean_vector(vector: FloatArray) -> Vector:
    """Return a unit vector as a tuple, with rounding residue like cos(90°) set to zero."""
    values = np.where(np.abs(vector) < 1e-12, 0.0, vector)
    values = values / np.linalg.norm(values)
    return (float(values[0]), float(values[1]), float(values[2]))

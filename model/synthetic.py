"""Synthetic head-and-neck CT phantoms for the demo and the tests (no patient data).

The phantom is an elliptic head and neck of soft tissue with a skull, an airway and a
spine on the midline and a lesion on one side. It can be turned and shifted, which gives
symmetrization a known pose to undo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from model.geometry import AIR_HU, corner_points


@dataclass(frozen=True)
class Phantom:
    """A phantom CT (HU, int16) and its lesion mask (uint8) on the same grid."""

    ct: sitk.Image
    lesion: sitk.Image


def make_phantom(
    size_xyz: tuple[int, int, int] = (160, 160, 60),
    spacing_xyz_mm: tuple[float, float, float] = (1.5, 1.5, 3.0),
    yaw_degrees: float = 0.0,
    shift_x_mm: float = 0.0,
    lesion_side: str = "left",
    seed: int = 0,
) -> Phantom:
    """Return a phantom CT with identity direction and its lesion mask.

    Parameters
    ----------
    size_xyz
        Grid size (x, y, z) in voxels.
    spacing_xyz_mm
        Voxel spacing (x, y, z) in mm.
    yaw_degrees
        Rotation of the anatomy about the z (head-feet) axis, so the mid-sagittal plane
        is not the grid's centre plane.
    shift_x_mm
        Shift of the anatomy along x (patient left).
    lesion_side
        ``"left"`` or ``"right"`` (patient side), or ``"none``" for a symmetric phantom.
    seed
        Seed of the added image noise (standard deviation 10 HU).
    """
    if lesion_side not in ("left", "right", "none"):
        raise ValueError(f"lesion_side must be 'left', 'right' or 'none', got {lesion_side!r}")
    nx, ny, nz = size_xyz
    sx, sy, sz = spacing_xyz_mm
    z, y, x = np.meshgrid(
        (np.arange(nz) - (nz - 1) / 2) * sz,
        (np.arange(ny) - (ny - 1) / 2) * sy,
        (np.arange(nx) - (nx - 1) / 2) * sx,
        indexing="ij",
    )  # (D, H, W) arrays of patient coordinates in mm, centred on the grid centre
    angle = math.radians(yaw_degrees)
    xa = math.cos(angle) * (x - shift_x_mm) + math.sin(angle) * y  # anatomy-frame coordinates
    ya = -math.sin(angle) * (x - shift_x_mm) + math.cos(angle) * y

    height = nz * sz
    upper = z > -0.1 * height  # head above, neck below
    radius_x = np.where(upper, 75.0, 55.0)
    radius_y = np.where(upper, 90.0, 60.0)
    body = (xa / radius_x) ** 2 + (ya / radius_y) ** 2 <= 1.0
    skull = body & upper & ((xa / (radius_x - 6)) ** 2 + (ya / (radius_y - 6)) ** 2 > 1.0)
    airway = ((xa / 8.0) ** 2 + ((ya + 15.0) / 10.0) ** 2) <= 1.0
    spine = ((xa / 12.0) ** 2 + ((ya - 35.0) / 12.0) ** 2) <= 1.0
    ct = np.full(x.shape, AIR_HU, dtype=np.float32)
    ct[body] = 40.0
    ct[skull | spine] = 700.0
    ct[airway & body] = -900.0
    # Symmetric soft-tissue structures either side of the airway (parotid-like fat).
    for side in (-1.0, 1.0):
        gland = ((xa - side * 40.0) / 14.0) ** 2 + ((ya - 5.0) / 18.0) ** 2 <= 1.0
        ct[gland & body] = -60.0

    lesion = np.zeros(x.shape, dtype=np.uint8)
    if lesion_side != "none":
        side = 1.0 if lesion_side == "left" else -1.0  # LPS: +x is the patient's left
        lesion_zone = (((xa - side * 18.0) / 14.0) ** 2 + ((ya + 10.0) / 14.0) ** 2 + (z / 20.0) ** 2) <= 1.0
        lesion[lesion_zone & body] = 1
        ct[lesion > 0] = 65.0
    ct += 10.0 * np.random.default_rng(seed).standard_normal(ct.shape, dtype=np.float32)

    image = sitk.GetImageFromArray(np.clip(np.round(ct), -1024, 3071).astype(np.int16))
    image.SetSpacing(spacing_xyz_mm)
    image.SetOrigin((-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, -(nz - 1) / 2 * sz))
    mask = sitk.GetImageFromArray(lesion)
    mask.CopyInformation(image)
    return Phantom(ct=image, lesion=mask)


def turn_and_shift(
    ct: sitk.Image, yaw_degrees: float, roll_degrees: float, shift_x_mm: float
) -> tuple[sitk.Image, sitk.Euler3DTransform]:
    """Resample ``ct`` on its own grid so its anatomy is turned and shifted by a known rigid motion.

    The motion turns about the grid centre: ``yaw`` about the z axis, ``roll`` about the
    y axis, then shifts along x. Returns the moved image and the transform ``T`` with
    ``moved(p) = ct(T(p))``; a plane of ``ct`` appears in the moved image as
    ``plane.pulled_back(T)``.
    """
    transform = sitk.Euler3DTransform()
    transform.SetCenter(np.mean(corner_points(ct), axis=0).tolist())
    transform.SetRotation(0.0, math.radians(roll_degrees), math.radians(yaw_degrees))
    transform.SetTranslation((shift_x_mm, 0.0, 0.0))
    return sitk.Resample(ct, ct, transform, sitk.sitkLinear, AIR_HU), transform

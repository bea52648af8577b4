"""Phantom objects defined in the patient frame (LPS, mm), and their rendering on a series grid."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from model.geometry import AIR_HU
from worker.synthetic_dicom.geometry import FloatArray, SeriesGeometry, Vector


class PhantomObject(Protocol):
    """Anything that :func:`render_phantom` can draw."""

    def paint(self, volume_hu: FloatArray, points_lps: FloatArray) -> None:
        """Set the HU of the voxels the object covers, in place.

        ``points_lps`` has shape ``volume_hu.shape + (3,)`` and contains the voxel centres.
        """


@dataclass(frozen=True)
class Ball:
    """A sphere of uniform HU."""

    centre_lps_mm: Vector
    radius_mm: float
    hu: float

    def contains(self, points_lps: FloatArray) -> npt.NDArray[np.bool_]:
        """Return whether each point ``(..., 3)`` lies inside the sphere."""
        offset = points_lps - np.asarray(self.centre_lps_mm)
        return np.einsum("...i,...i->...", offset, offset) <= self.radius_mm**2

    def paint(self, volume_hu: FloatArray, points_lps: FloatArray) -> None:
        volume_hu[self.contains(points_lps)] = self.hu


@dataclass(frozen=True)
class Rod:
    """An infinite cylinder of uniform HU around the line through ``point_lps_mm``."""

    point_lps_mm: Vector
    direction: Vector
    radius_mm: float
    hu: float

    def contains(self, points_lps: FloatArray) -> npt.NDArray[np.bool_]:
        """Return whether each point ``(..., 3)`` lies inside the cylinder."""
        axis = np.asarray(self.direction, dtype=np.float64)
        axis = axis / np.linalg.norm(axis)
        offset = points_lps - np.asarray(self.point_lps_mm)
        radial = offset - (offset @ axis)[..., None] * axis
        return np.einsum("...i,...i->...", radial, radial) <= self.radius_mm**2

    def paint(self, volume_hu: FloatArray, points_lps: FloatArray) -> None:
        volume_hu[self.contains(points_lps)] = self.hu


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid of uniform HU, with semi-axes along x, y, z turned by ``yaw_deg`` about z."""

    centre_lps_mm: Vector
    semi_axes_mm: Vector
    hu: float
    yaw_deg: float = 0.0

    def contains(self, points_lps: FloatArray) -> npt.NDArray[np.bool_]:
        """Return whether each point ``(..., 3)`` lies inside the ellipsoid."""
        scaled = _to_yawed_frame(points_lps, self.centre_lps_mm, self.yaw_deg) / np.asarray(self.semi_axes_mm)
        return np.einsum("...i,...i->...", scaled, scaled) <= 1.0

    def paint(self, volume_hu: FloatArray, points_lps: FloatArray) -> None:
        volume_hu[self.contains(points_lps)] = self.hu


def _to_yawed_frame(points_lps: FloatArray, centre: Vector, yaw_deg: float) -> FloatArray:
    """Return ``(..., 3)`` coordinates relative to ``centre`` in axes turned by ``yaw_deg`` about z."""
    angle = math.radians(yaw_deg)
    offset = points_lps - np.asarray(centre)
    local = np.empty_like(offset)
    local[..., 0] = math.cos(angle) * offset[..., 0] + math.sin(angle) * offset[..., 1]
    local[..., 1] = -math.sin(angle) * offset[..., 0] + math.cos(angle) * offset[..., 1]
    local[..., 2] = offset[..., 2]
    return local


@dataclass(frozen=True)
class HeadNeck:
    """A head and neck with skull, airway, spine, two parotid-like glands and a lesion.

    The anatomy is the one of :func:`model.synthetic.make_phantom`, placed in the patient
    frame: ``centre_lps_mm`` is on the midline at the height of the lesion centre, the
    head lies above ``centre_z - neck_below_mm`` and the neck below, and ``yaw_deg`` turns
    the anatomy about the z axis.
    """

    centre_lps_mm: Vector = (0.0, 0.0, 0.0)
    yaw_deg: float = 0.0
    lesion_side: str = "left"
    neck_below_mm: float = 18.0

    def __post_init__(self) -> None:
        if self.lesion_side not in ("left", "right", "none"):
            raise ValueError(f"lesion_side must be 'left', 'right' or 'none', got {self.lesion_side!r}")

    def lesion(self) -> Ellipsoid | None:
        """Return the lesion as an ellipsoid (HU 65), or ``None`` when ``lesion_side`` is ``"none"``."""
        if self.lesion_side == "none":
            return None
        side = 1.0 if self.lesion_side == "left" else -1.0  # LPS: +x is the patient's left
        angle = math.radians(self.yaw_deg)
        local_x, local_y = side * 18.0, -10.0
        centre = np.asarray(self.centre_lps_mm) + [
            math.cos(angle) * local_x - math.sin(angle) * local_y,
            math.sin(angle) * local_x + math.cos(angle) * local_y,
            0.0,
        ]
        return Ellipsoid(
            centre_lps_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
            semi_axes_mm=(14.0, 14.0, 20.0),
            hu=65.0,
            yaw_deg=self.yaw_deg,
        )

    def paint(self, volume_hu: FloatArray, points_lps: FloatArray) -> None:
        local = _to_yawed_frame(points_lps, self.centre_lps_mm, self.yaw_deg)
        xa, ya, za = local[..., 0], local[..., 1], local[..., 2]
        head = za > -self.neck_below_mm
        radius_x = np.where(head, 75.0, 55.0)
        radius_y = np.where(head, 90.0, 60.0)
        body = (xa / radius_x) ** 2 + (ya / radius_y) ** 2 <= 1.0
        skull = body & head & ((xa / (radius_x - 6.0)) ** 2 + (ya / (radius_y - 6.0)) ** 2 > 1.0)
        airway = body & ((xa / 8.0) ** 2 + ((ya + 15.0) / 10.0) ** 2 <= 1.0)
        spine = (xa / 12.0) ** 2 + ((ya - 35.0) / 12.0) ** 2 <= 1.0
        volume_hu[body] = 40.0
        volume_hu[skull | spine] = 700.0
        volume_hu[airway] = -900.0
        for side in (-1.0, 1.0):
            gland = ((xa - side * 40.0) / 14.0) ** 2 + ((ya - 5.0) / 18.0) ** 2 <= 1.0
            volume_hu[gland & body] = -60.0
        lesion = self.lesion()
        if lesion is not None:
            lesion.paint(volume_hu, points_lps)


def render_phantom(
    geometry: SeriesGeometry,
    objects: Sequence[PhantomObject],
    *,
    background_hu: float = AIR_HU,
    noise_sd_hu: float = 0.0,
    seed: int = 0,
) -> npt.NDArray[np.int16]:
    """Render phantom objects on the voxel centres of ``geometry``.

    Parameters
    ----------
    geometry
        Grid to render on.
    objects
        Objects in the patient frame, painted in order, so later objects cover earlier ones.
    background_hu
        HU of voxels that no object covers.
    noise_sd_hu
        Standard deviation of added Gaussian noise in HU (0 for none).
    seed
        Seed of the noise.

    Returns
    -------
    numpy.ndarray
        ``(D, H, W)`` int16 HU, rounded and clipped to the 12-bit CT range -1024..3071.
    """
    if not (math.isfinite(noise_sd_hu) and noise_sd_hu >= 0):
        raise ValueError(f"noise_sd_hu must be zero or positive, got {noise_sd_hu!r}")
    points = geometry.voxel_centres_lps()
    volume = np.full(geometry.shape, float(background_hu), dtype=np.float64)
    for item in objects:
        item.paint(volume, points)
    if noise_sd_hu > 0:
        volume += noise_sd_hu * np.random.default_rng(seed).standard_normal(volume.shape)
    return np.clip(np.round(volume), -1024, 3071).astype(np.int16)


def render_mask(geometry: SeriesGeometry, solid: Ball | Rod | Ellipsoid) -> npt.NDArray[np.bool_]:
    """Return the ``(D, H, W)`` boolean mask of the voxels whose centre lies inside ``solid``."""
    return solid.contains(geometry.voxel_centres_lps())

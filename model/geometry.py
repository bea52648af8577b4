"""Axis and coordinate conventions shared by every module that handles volumes.

Arrays are indexed ``(D, H, W)`` = (slice, row, column), which is the order that
``SimpleITK.GetArrayFromImage`` returns. SimpleITK images and physical points use
``(x, y, z)`` in the DICOM patient frame (LPS: x to the patient's left, y to posterior,
z to head). Conversion between the two orders happens only in this module.

In the symmetric frame produced by :mod:`model.symmetry` the grid direction is the
identity, so the W axis runs along patient x (right to left) and the mid-sagittal plane
is the plane x = 0, which lies exactly halfway between the first and the last column.
Flipping an array along :data:`LR_AXIS` is then the mirror image across that plane.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

#: Axis of a ``(D, H, W)`` array, or of a ``(N, C, D, H, W)`` tensor, that runs left-right
#: in the symmetric frame.
LR_AXIS = -1

#: HU value used for voxels outside the scanned field of view.
AIR_HU = -1024.0


def spacing_dhw(image: sitk.Image) -> tuple[float, float, float]:
    """Return the voxel spacing of ``image`` in mm, in array order ``(D, H, W)``."""
    sx, sy, sz = image.GetSpacing()  # (x, y, z) -> (D, H, W) is reversed order
    return (float(sz), float(sy), float(sx))


def to_array(image: sitk.Image, dtype: type = np.float32) -> np.ndarray:
    """Return the voxels of a 3-D ``image`` as a ``(D, H, W)`` array of ``dtype``."""
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3-D image, got {image.GetDimension()}-D")
    return sitk.GetArrayFromImage(image).astype(dtype, copy=False)


def to_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap a ``(D, H, W)`` array in an image with the geometry of ``reference``.

    Raises
    ------
    ValueError
        If the array shape differs from the reference grid.
    """
    expected = tuple(reversed(reference.GetSize()))  # (x, y, z) -> (D, H, W)
    if tuple(array.shape) != expected:
        raise ValueError(f"array shape {tuple(array.shape)} does not match the reference grid {expected} (D, H, W)")
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def make_grid(
    size_dhw: Sequence[int],
    spacing_dhw_mm: Sequence[float],
    origin_xyz: Sequence[float],
    pixel_type: int = sitk.sitkFloat32,
) -> sitk.Image:
    """Create an empty image with identity direction on the given grid.

    Parameters
    ----------
    size_dhw
        Grid size in voxels, ``(D, H, W)``.
    spacing_dhw_mm
        Voxel spacing in mm, ``(D, H, W)``.
    origin_xyz
        Physical position (LPS, mm) of the centre of voxel ``(0, 0, 0)``.
    pixel_type
        SimpleITK pixel type.
    """
    image = sitk.Image([int(s) for s in reversed(size_dhw)], pixel_type)
    image.SetSpacing([float(s) for s in reversed(spacing_dhw_mm)])
    image.SetOrigin([float(o) for o in origin_xyz])
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image


def index_to_patient(image: sitk.Image, index_dhw: np.ndarray) -> np.ndarray:
    """Map ``(K, 3)`` continuous voxel indices in ``(D, H, W)`` order to LPS points in mm.

    Returns an ``(K, 3)`` array of ``(x, y, z)`` points.
    """
    index_xyz = np.asarray(index_dhw, dtype=np.float64)[:, ::-1]  # (D, H, W) -> (x, y, z)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    return origin + (index_xyz * spacing) @ direction.T


def corner_points(image: sitk.Image) -> np.ndarray:
    """Return the 8 corner voxel centres of ``image`` as an ``(8, 3)`` LPS array in mm."""
    d, h, w = (s - 1 for s in reversed(image.GetSize()))
    corners = np.array([[i, j, k] for i in (0, d) for j in (0, h) for k in (0, w)], dtype=np.float64)
    return index_to_patient(image, corners)

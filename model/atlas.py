"""Build a left-right symmetric head-and-neck CT atlas from real CTs.

Each CT is first symmetrized against its own mirror image (``self`` mode). All are then
registered to the first one with a similarity transform (rotation, translation and one
scale), because a full affine fit between partial fields of view can collapse an axis.
They are averaged where they overlap and averaged with their own mirror image, which
makes the atlas exactly symmetric about x = 0. Further rounds register every CT to the
current atlas and average again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from model.geometry import AIR_HU, LR_AXIS, to_array, to_image
from model.symmetry import register_to_atlas, resample_into, symmetrize

logger = logging.getLogger(__name__)

#: Atlas voxel spacing in mm (isotropic). Registration runs at 4 mm anyway.
ATLAS_SPACING_MM = 4.0


def _average(images: Sequence[sitk.Image], grid: sitk.Image, transforms: Sequence[sitk.Transform]) -> sitk.Image:
    """Average ``images`` on ``grid`` where each covers it, then with the mirror image."""
    total = np.zeros(tuple(reversed(grid.GetSize())), dtype=np.float64)
    count = np.zeros_like(total)
    for image, transform in zip(images, transforms, strict=True):
        values = to_array(resample_into(image, grid, transform, default=np.nan))
        covered = ~np.isnan(values)
        total[covered] += values[covered]
        count[covered] += 1
    total += np.flip(total, axis=LR_AXIS)
    count += np.flip(count, axis=LR_AXIS)
    mean = np.full_like(total, AIR_HU)
    np.divide(total, count, out=mean, where=count > 0)
    return to_image(mean.astype(np.float32), grid)


def build_atlas(cts: Sequence[sitk.Image], rounds: int = 2) -> sitk.Image:
    """Return a symmetric atlas (float32 HU, 4 mm isotropic, mid-sagittal plane x = 0).

    Parameters
    ----------
    cts
        Head-and-neck CTs in HU. The first one sets the atlas field of view.
    rounds
        Registration-and-averaging rounds after the first self-symmetrized average.
    """
    if len(cts) < 2:
        raise ValueError(f"an atlas needs at least 2 CTs, got {len(cts)}")
    spacing = (ATLAS_SPACING_MM,) * 3
    symmetric = [symmetrize(ct, spacing, mode="self").image for ct in cts]
    reference = symmetric[0]
    grid = sitk.Image(reference.GetSize(), sitk.sitkFloat32)
    grid.CopyInformation(reference)

    identity = sitk.AffineTransform(3)
    transforms: list[sitk.Transform] = [identity]
    for image in symmetric[1:]:
        transform, _ = register_to_atlas(image, reference, "similarity")
        transforms.append(transform)
    atlas = _average(symmetric, grid, transforms)

    for round_index in range(rounds):
        transforms = []
        for image in symmetric:
            transform, _ = register_to_atlas(image, atlas, "similarity")
            transforms.append(transform)
        atlas = _average(symmetric, grid, transforms)
        logger.info("atlas round %d of %d done", round_index + 1, rounds)
    return atlas

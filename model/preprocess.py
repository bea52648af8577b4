"""Preprocessing after symmetrization: body crop and CT intensity normalisation.

Arrays are ``(D, H, W)`` in the symmetric frame, HU unless stated otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from model.errors import InputError
from model.symmetry import BODY_HU

#: Voxels of margin kept around the body bounding box by :func:`body_crop`.
CROP_MARGIN_VOXELS = 2


@dataclass(frozen=True)
class CropBox:
    """Half-open index ranges ``[start, stop)`` along D, H and W of a symmetric-frame array.

    The W range is always symmetric about the centre of the array, so a crop keeps the
    mid-sagittal plane at its centre.
    """

    d: tuple[int, int]
    h: tuple[int, int]
    w: tuple[int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Index expression for a ``(D, H, W)`` array."""
        return (slice(*self.d), slice(*self.h), slice(*self.w))


def body_crop(volume_hu: np.ndarray, margin: int = CROP_MARGIN_VOXELS) -> CropBox:
    """Return the bounding box of the body (largest connected region above -500 HU).

    The W range is widened to be symmetric about the array's centre column plane.

    Raises
    ------
    InputError
        If no voxel is above -500 HU.
    """
    body = volume_hu > BODY_HU
    labels, count = ndimage.label(body)
    if count == 0:
        raise InputError("the volume contains no body (no voxel above -500 HU)", code="volume.no_body")
    # Voxel counts per label and the boxes of all labels, without a weighted sum or a
    # mask of the largest region, because both made temporaries of the whole volume.
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    box = ndimage.find_objects(labels)[int(np.argmax(sizes))]
    shape = volume_hu.shape
    d = (max(0, box[0].start - margin), min(shape[0], box[0].stop + margin))
    h = (max(0, box[1].start - margin), min(shape[1], box[1].stop + margin))
    width = shape[2]
    # Distance of the body's farther edge from the centre plane, in columns.
    reach = max(width / 2 - box[2].start, box[2].stop - width / 2) + margin
    w_start = max(0, int(np.floor(width / 2 - reach)))
    return CropBox(d=d, h=h, w=(w_start, width - w_start))


@dataclass(frozen=True)
class IntensityNormalization:
    """CT normalisation: clip HU to ``[lower, upper]``, then ``(HU - mean) / std``.

    The values are foreground statistics of the training set (the percentiles 0.5 and
    99.5 and the mean and standard deviation of the clipped tumour voxels), as nnU-Net
    does for CT; they are stored in the checkpoint.
    """

    lower: float
    upper: float
    mean: float
    std: float

    @classmethod
    def from_foreground(cls, values_hu: np.ndarray) -> IntensityNormalization:
        """Compute the statistics from a 1-D array of foreground HU values."""
        if values_hu.size == 0:
            raise InputError("no foreground voxels: cannot compute intensity statistics")
        lower, upper = np.percentile(values_hu, [0.5, 99.5])
        clipped = np.clip(values_hu, lower, upper)
        return cls(float(lower), float(upper), float(clipped.mean()), float(max(clipped.std(), 1e-3)))

    def apply(self, volume_hu: np.ndarray) -> np.ndarray:
        """Return the normalised float32 copy of ``volume_hu``."""
        clipped = np.clip(volume_hu.astype(np.float32), self.lower, self.upper)
        return (clipped - np.float32(self.mean)) / np.float32(self.std)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form stored in the checkpoint metadata."""
        return asdict(self)

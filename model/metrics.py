"""Segmentation metrics: DSC, average symmetric surface distance and HD95.

Masks are boolean ``(D, H, W)`` arrays on the same grid; spacing is ``(D, H, W)`` in mm.
Surface distances follow MONAI's conventions (``compute_average_surface_distance`` with
``symmetric=True`` and ``compute_hausdorff_distance`` with ``percentile=95``): the
surface of a mask is the mask minus its erosion by the 6-connected cross, distances are
Euclidean in mm from each surface voxel centre of one mask to the nearest surface voxel
centre of the other, ASD is the mean of both directed distance sets pooled together and
HD95 is the larger of the two directed 95th percentiles.

Empty masks are handled explicitly: both empty gives DSC 1 and distances 0; exactly one
empty gives DSC 0 and distances NaN (undefined), which summaries count separately.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def _check_pair(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if prediction.shape != reference.shape:
        raise ValueError(f"mask shapes differ: prediction {prediction.shape}, reference {reference.shape}")
    return prediction.astype(bool), reference.astype(bool)


def dice_coefficient(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Return the Dice similarity coefficient 2|A and B| / (|A| + |B|); 1.0 when both are empty."""
    a, b = _check_pair(prediction, reference)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Return the boolean surface voxels: ``mask`` minus its 6-connected erosion."""
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    return mask & ~eroded


def _directed_distances(source: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``source`` to the nearest of ``target``'s surface."""
    distance_to_target = ndimage.distance_transform_edt(~surface(target), sampling=spacing)
    return np.asarray(distance_to_target[surface(source)], dtype=np.float64)


@dataclass(frozen=True)
class CaseMetrics:
    """Metrics of one case; distances are NaN when exactly one mask is empty."""

    dsc: float
    asd_mm: float
    hd95_mm: float
    prediction_voxels: int
    reference_voxels: int


def evaluate_masks(prediction: np.ndarray, reference: np.ndarray, spacing_dhw_mm: Sequence[float]) -> CaseMetrics:
    """Compute DSC, ASD and HD95 for one pair of masks."""
    a, b = _check_pair(prediction, reference)
    if len(spacing_dhw_mm) != 3 or min(spacing_dhw_mm) <= 0:
        raise ValueError(f"spacing must be three positive values in mm, got {spacing_dhw_mm!r}")
    count_a, count_b = int(a.sum()), int(b.sum())
    dsc = dice_coefficient(a, b)
    if count_a == 0 and count_b == 0:
        return CaseMetrics(dsc, 0.0, 0.0, 0, 0)
    if count_a == 0 or count_b == 0:
        return CaseMetrics(dsc, math.nan, math.nan, count_a, count_b)
    forward = _directed_distances(a, b, spacing_dhw_mm)
    backward = _directed_distances(b, a, spacing_dhw_mm)
    asd = float(np.concatenate([forward, backward]).mean())
    hd95 = float(max(np.percentile(forward, 95), np.percentile(backward, 95)))
    return CaseMetrics(dsc, asd, hd95, count_a, count_b)

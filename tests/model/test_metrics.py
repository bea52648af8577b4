import math

import numpy as np
import pytest

from model.metrics import dice_coefficient, evaluate_masks, surface


def cube(shape, start, stop):
    mask = np.zeros(shape, dtype=bool)
    mask[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]] = True
    return mask


def test_dice_half_overlap():
    a = cube((1, 1, 8), (0, 0, 0), (1, 1, 4))
    b = cube((1, 1, 8), (0, 0, 2), (1, 1, 6))
    assert dice_coefficient(a, b) == pytest.approx(2 * 2 / 8)


def test_identical_masks_zero_distance():
    a = cube((10, 10, 10), (2, 2, 2), (7, 7, 7))
    result = evaluate_masks(a, a, (1.0, 1.0, 1.0))
    assert result.dsc == 1.0
    assert result.asd_mm == 0.0
    assert result.hd95_mm == 0.0


def test_shifted_cube_distances_in_mm():
    # A 4-voxel cube shifted by one column with 2 mm columns: faces move 2 mm.
    a = cube((8, 8, 12), (2, 2, 2), (6, 6, 6))
    b = cube((8, 8, 12), (2, 2, 3), (6, 6, 7))
    result = evaluate_masks(a, b, (1.0, 1.0, 2.0))
    assert result.dsc == pytest.approx(2 * 48 / 128)
    assert result.hd95_mm == pytest.approx(2.0)
    # Each cube has 56 surface voxels. From a to b: the 16 voxels of a's face outside b
    # are one column (2 mm) from b's surface; the 4 inner voxels of a's other face lie
    # inside b, one row (1 mm) from b's surface; the other 36 lie on b's surface. The
    # same holds from b to a, so ASD = 2 * (16 * 2 + 4 * 1) / 112.
    assert result.asd_mm == pytest.approx(2 * (16 * 2.0 + 4 * 1.0) / 112)


def test_surface_of_cube():
    a = cube((6, 6, 6), (1, 1, 1), (5, 5, 5))
    assert surface(a).sum() == 64 - 8


def test_both_empty():
    empty = np.zeros((4, 4, 4), dtype=bool)
    result = evaluate_masks(empty, empty, (1, 1, 1))
    assert (result.dsc, result.asd_mm, result.hd95_mm) == (1.0, 0.0, 0.0)


def test_empty_prediction_distances_undefined():
    empty = np.zeros((4, 4, 4), dtype=bool)
    reference = cube((4, 4, 4), (1, 1, 1), (3, 3, 3))
    result = evaluate_masks(empty, reference, (1, 1, 1))
    assert result.dsc == 0.0
    assert math.isnan(result.asd_mm)
    assert math.isnan(result.hd95_mm)


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="shapes differ"):
        dice_coefficient(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))

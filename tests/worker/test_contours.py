"""Boundary tracing of 2-D masks: polygon shapes, areas, orientation and the even-odd rule."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.path import Path as PolygonPath

from worker.contours import polygon_area, trace_slice


def _as_tuples(points: np.ndarray) -> list[tuple[float, float]]:
    return [(float(r), float(c)) for r, c in points]


def _fill_even_odd(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise polygons at pixel centres by the even-odd rule (XOR of the insides)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    centres = np.column_stack([rows.ravel(), cols.ravel()]).astype(np.float64)
    filled = np.zeros(len(centres), dtype=bool)
    for polygon in polygons:
        filled ^= PolygonPath(polygon).contains_points(centres)
    return filled.reshape(shape)


def _check_polygon_invariants(polygon: np.ndarray) -> None:
    assert polygon.ndim == 2
    assert polygon.shape[1] == 2
    assert len(polygon) >= 4
    assert np.all(np.mod(polygon, 1.0) == 0.5), "vertices must lie on pixel corners (half-integers)"
    assert len({tuple(v) for v in polygon.tolist()}) == len(polygon), "polygon repeats a vertex"
    edges = np.roll(polygon, -1, axis=0) - polygon
    assert np.all(np.count_nonzero(edges, axis=1) == 1), "edges must be axis-aligned and non-zero"
    following = np.roll(edges, -1, axis=0)
    cross = edges[:, 0] * following[:, 1] - edges[:, 1] * following[:, 0]
    assert np.all(cross != 0), "consecutive edges are collinear"


def test_square_one_polygon_area_100():
    mask = np.zeros((14, 16), dtype=bool)
    mask[2:12, 3:13] = True

    polygons = trace_slice(mask)

    assert len(polygons) == 1
    assert _as_tuples(polygons[0]) == [(1.5, 2.5), (11.5, 2.5), (11.5, 12.5), (1.5, 12.5)]
    assert polygon_area(polygons[0]) == 100.0


def test_single_pixel_four_vertices():
    mask = np.zeros((3, 3), dtype=np.uint8)
    mask[1, 1] = 1

    polygons = trace_slice(mask)

    assert len(polygons) == 1
    assert _as_tuples(polygons[0]) == [(0.5, 0.5), (1.5, 0.5), (1.5, 1.5), (0.5, 1.5)]
    assert polygon_area(polygons[0]) == 1.0


def test_pixel_at_image_corner_extends_past_edge():
    mask = np.zeros((2, 2), dtype=bool)
    mask[0, 0] = True

    polygons = trace_slice(mask)

    assert _as_tuples(polygons[0]) == [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]


def test_l_shape_six_vertices():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:5, 1:3] = True  # vertical bar, 4 x 2
    mask[3:5, 3:5] = True  # foot, 2 x 2

    polygons = trace_slice(mask)

    assert len(polygons) == 1
    assert _as_tuples(polygons[0]) == [(0.5, 0.5), (4.5, 0.5), (4.5, 4.5), (2.5, 4.5), (2.5, 2.5), (0.5, 2.5)]
    assert polygon_area(polygons[0]) == 12.0


def test_ring_outer_and_hole_opposite_orientation():
    mask = np.zeros((9, 9), dtype=bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False

    polygons = trace_slice(mask)

    assert len(polygons) == 2
    areas = sorted(polygon_area(p) for p in polygons)
    assert areas == [-9.0, 49.0]
    outer = next(p for p in polygons if polygon_area(p) > 0)
    hole = next(p for p in polygons if polygon_area(p) < 0)
    assert _as_tuples(outer) == [(0.5, 0.5), (7.5, 0.5), (7.5, 7.5), (0.5, 7.5)]
    assert _as_tuples(hole) == [(2.5, 2.5), (2.5, 5.5), (5.5, 5.5), (5.5, 2.5)]


def test_diagonal_pixels_separate_polygons():
    mask = np.array([[1, 0], [0, 1]], dtype=bool)

    polygons = trace_slice(mask)

    assert len(polygons) == 2
    assert [polygon_area(p) for p in polygons] == [1.0, 1.0]
    assert _as_tuples(polygons[0]) == [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]
    assert _as_tuples(polygons[1]) == [(0.5, 0.5), (1.5, 0.5), (1.5, 1.5), (0.5, 1.5)]


def test_hole_touching_outside_at_corner_split():
    # The background centre pixel touches the outside only through the corner at (0.5, 0.5),
    # so the outer boundary touches itself there and is split into a simple outer polygon
    # and a hole polygon.
    mask = np.ones((3, 3), dtype=bool)
    mask[0, 0] = False
    mask[1, 1] = False

    polygons = trace_slice(mask)

    assert sorted(polygon_area(p) for p in polygons) == [-1.0, 8.0]
    for polygon in polygons:
        _check_polygon_invariants(polygon)
    assert np.array_equal(_fill_even_odd(polygons, mask.shape), mask)


def test_empty_mask_no_polygons():
    assert trace_slice(np.zeros((5, 7), dtype=bool)) == []


def test_full_mask_one_polygon():
    polygons = trace_slice(np.ones((4, 5), dtype=bool))

    assert len(polygons) == 1
    assert polygon_area(polygons[0]) == 20.0


def test_three_d_input_rejected():
    with pytest.raises(ValueError, match="2-D"):
        trace_slice(np.zeros((2, 3, 3), dtype=bool))


def test_random_masks_signed_areas_sum_to_pixel_count():
    rng = np.random.default_rng(20240522)
    for trial in range(200):
        shape = (int(rng.integers(1, 24)), int(rng.integers(1, 24)))
        mask = rng.random(shape) < rng.uniform(0.1, 0.9)

        polygons = trace_slice(mask)

        total = sum(polygon_area(p) for p in polygons)
        assert total == mask.sum(), f"trial {trial}: signed areas sum to {total}, mask has {mask.sum()} pixels"
        for polygon in polygons:
            _check_polygon_invariants(polygon)


def test_random_masks_even_odd_fill_restores_mask():
    rng = np.random.default_rng(7)
    for trial in range(60):
        shape = (int(rng.integers(2, 20)), int(rng.integers(2, 20)))
        mask = rng.random(shape) < rng.uniform(0.2, 0.8)

        filled = _fill_even_odd(trace_slice(mask), shape)

        assert np.array_equal(filled, mask), f"trial {trial}: even-odd fill differs from the mask"


def test_blob_with_holes_on_512_grid():
    rows, cols = np.mgrid[:512, :512]
    mask = (rows - 256) ** 2 + (cols - 250) ** 2 < 50**2
    mask &= ~(((rows - 240) ** 2 + (cols - 240) ** 2) < 10**2)
    mask[270:280, 260:275] = False

    polygons = trace_slice(mask)

    assert len(polygons) == 3
    assert sum(polygon_area(p) > 0 for p in polygons) == 1
    assert sum(polygon_area(p) for p in polygons) == mask.sum()

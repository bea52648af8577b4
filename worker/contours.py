"""Polygons that trace the pixel boundaries of a 2-D binary mask.

The polygons follow pixel edges, not pixel centres, so filling them back with any
rasteriser that tests pixel centres returns exactly the original mask: no centre lies on
an edge. Coordinates are continuous ``(row, col)`` indices in which pixel ``(r, c)``
covers ``[r - 0.5, r + 0.5] x [c - 0.5, c + 0.5]``, so every vertex lies on half-integers.

Conventions
-----------
Connectivity
    Foreground is 4-connected, so pixels that touch only at a corner belong to separate
    polygons. Background is therefore 8-connected: a background region that touches
    the outside through a corner is not a hole, and the outer polygon touches itself at
    that corner.
Orientation
    Outer boundaries have a positive signed area in ``(row, col)`` coordinates (see
    :func:`polygon_area`), which is counter-clockwise as displayed with row 0 at the top
    and column 0 at the left. Hole boundaries have a negative signed area.
Hole rule
    The polygons of one slice encode the mask by the even-odd rule: a point is inside
    the mask when it lies inside an odd number of polygons. Holes are therefore their
    own polygons, not joined to the outer boundary by a cut. Each polygon is simple
    (no vertex repeated), although a hole may touch its outer boundary at one vertex.
"""

from __future__ import annotations

import numpy as np

# Edge directions as (d_row, d_col) steps between pixel corners, indexed by direction code.
_DOWN, _RIGHT, _UP, _LEFT = 0, 1, 2, 3
_STEPS = np.array([(1, 0), (0, 1), (-1, 0), (0, -1)], dtype=np.int64)


def trace_slice(mask2d: np.ndarray) -> list[np.ndarray]:
    """Trace the closed boundary polygons of a 2-D binary mask.

    Parameters
    ----------
    mask2d
        ``(H, W)`` = (row, column) array. Non-zero pixels are foreground.

    Returns
    -------
    list of numpy.ndarray
        One ``(K, 2)`` float64 array of ``(row, col)`` vertices per polygon, with
        ``K >= 4``, the first vertex not repeated at the end and no collinear
        intermediate vertices. Outer boundaries have a positive signed area and holes a
        negative one, so the signed areas sum to the foreground pixel count. Polygons
        are ordered by their first vertex in raster order. An empty mask gives ``[]``.

    Raises
    ------
    ValueError
        If ``mask2d`` is not 2-D.

    Notes
    -----
    Edge extraction is vectorised. Following the edges around each polygon is a Python
    loop over boundary edges, so the time grows with the boundary length, not with the
    image size.
    """
    mask = np.asarray(mask2d)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) mask, got shape {mask.shape}")

    foreground = mask != 0
    rows = np.flatnonzero(foreground.any(axis=1))
    if len(rows) == 0:
        return []
    columns = np.flatnonzero(foreground.any(axis=0))
    # Trace inside the bounding box of the foreground, then shift the corners back.
    top, left = int(rows[0]), int(columns[0])
    starts, directions = _boundary_edges(foreground[top : int(rows[-1]) + 1, left : int(columns[-1]) + 1])
    starts += np.array([top, left], dtype=np.int64)

    next_edge = _link_edges(starts, directions)
    return _collect_polygons(starts, directions, next_edge)


def polygon_area(points: np.ndarray) -> float:
    """Compute the signed area of a closed polygon by the shoelace formula.

    Parameters
    ----------
    points
        ``(K, 2)`` vertices in ``(row, col)`` order, without the first vertex repeated.

    Returns
    -------
    float
        Area in squared index units. It is positive for the outer boundaries returned by
        :func:`trace_slice` and negative for their holes.
    """
    vertices = np.asarray(points, dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 2:
        raise ValueError(f"expected (K, 2) points, got shape {vertices.shape}")
    rows, cols = vertices[:, 0], vertices[:, 1]
    return 0.5 * float(np.sum(rows * np.roll(cols, -1) - np.roll(rows, -1) * cols))


def _boundary_edges(foreground: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the start corner ``(E, 2)`` and direction code ``(E,)`` of every boundary edge.

    Corner ``(i, j)`` is the point ``(i - 0.5, j - 0.5)`` in pixel coordinates. Every edge
    between a foreground and a background pixel is directed around the foreground pixel:
    down its left side, right along its bottom, up its right side and left along its top.
    """
    padded = np.pad(foreground, 1, constant_values=False)
    inner = padded[1:-1, 1:-1]
    sides = (
        # (exposed side of each foreground pixel, corner offset of the edge start, direction)
        (inner & ~padded[1:-1, :-2], (0, 0), _DOWN),  # left side
        (inner & ~padded[2:, 1:-1], (1, 0), _RIGHT),  # bottom side
        (inner & ~padded[1:-1, 2:], (1, 1), _UP),  # right side
        (inner & ~padded[:-2, 1:-1], (0, 1), _LEFT),  # top side
    )
    start_parts = []
    direction_parts = []
    for exposed, offset, direction in sides:
        pixels = np.argwhere(exposed)
        start_parts.append(pixels + np.asarray(offset, dtype=np.int64))
        direction_parts.append(np.full(len(pixels), direction, dtype=np.int64))
    return np.concatenate(start_parts), np.concatenate(direction_parts)


def _link_edges(starts: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Return, for every edge, the index of the edge that follows it on its polygon.

    At most corners one boundary edge leaves. Where two leave (two foreground pixels
    that touch only at this corner), the polygon turns around the pixel it is already
    following, which keeps diagonal neighbours apart (4-connected foreground).
    """
    width = int(starts[:, 1].max()) + 2
    start_keys = starts[:, 0] * width + starts[:, 1]
    ends = starts + _STEPS[directions]
    end_keys = ends[:, 0] * width + ends[:, 1]

    order = np.argsort(start_keys, kind="stable")
    sorted_keys = start_keys[order]
    first = np.searchsorted(sorted_keys, end_keys, side="left")
    count = np.searchsorted(sorted_keys, end_keys, side="right") - first

    next_edge = order[first]
    # Turning around the same pixel maps down -> right -> up -> left -> down.
    expected_direction = (directions + 1) % 4
    saddle = np.flatnonzero(count == 2)
    second = order[first[saddle] + 1]
    use_second = directions[second] == expected_direction[saddle]
    next_edge[saddle[use_second]] = second[use_second]
    return next_edge


def _collect_polygons(starts: np.ndarray, directions: np.ndarray, next_edge: np.ndarray) -> list[np.ndarray]:
    """Follow the edge cycles, split them at repeated corners and keep only the turns."""
    is_turn = directions[next_edge] != directions  # the end corner of the edge is a vertex
    ends = starts + _STEPS[directions]
    visited = np.zeros(len(starts), dtype=bool)
    polygons: list[np.ndarray] = []

    for first in range(len(starts)):
        if visited[first]:
            continue
        # A cycle that passes a corner twice is split there into simple loops. The path
        # contains the corners of the loop being built, and position maps each to its index.
        path: list[tuple[int, int]] = []
        position: dict[tuple[int, int], int] = {}
        edge = first
        while not visited[edge]:
            visited[edge] = True
            if is_turn[edge]:
                corner = (int(ends[edge, 0]), int(ends[edge, 1]))
                if corner in position:
                    start = position[corner]
                    polygons.append(_to_points(path[start:]))
                    for removed in path[start + 1 :]:
                        del position[removed]
                    del path[start + 1 :]
                else:
                    position[corner] = len(path)
                    path.append(corner)
            edge = int(next_edge[edge])
        polygons.append(_to_points(path))

    polygons.sort(key=lambda points: (points[0, 0], points[0, 1]))
    return polygons


def _to_points(corners: list[tuple[int, int]]) -> np.ndarray:
    """Convert corner indices to ``(row, col)`` pixel coordinates, first vertex top-left."""
    points = np.asarray(corners, dtype=np.float64) - 0.5
    first = int(np.lexsort((points[:, 1], points[:, 0]))[0])
    return np.roll(points, -first, axis=0)

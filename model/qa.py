"""QA picture: axial, coronal and sagittal CT views with the predicted contour."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.figure import Figure


def write_qa_png(
    ct_hu: np.ndarray,
    mask: np.ndarray,
    spacing_dhw_mm: Sequence[float],
    path: Path,
    superior_last: bool = True,
    direction: np.ndarray | None = None,
) -> None:
    """Write three orthogonal views through the mask's centre (or the volume centre if empty).

    Parameters
    ----------
    ct_hu
        ``(D, H, W)`` CT in HU.
    mask
        ``(D, H, W)`` binary mask on the same grid.
    spacing_dhw_mm
        Voxel spacing, used for the aspect ratio of the coronal and sagittal views.
    path
        PNG file to write.
    superior_last
        Whether the last slice is the most superior one, as with an identity direction
        in LPS. Coronal and sagittal views are drawn with the head at the top.
    direction
        3 x 3 direction matrix of the grid (columns: the LPS directions of the W, H and D
        axes), used to letter the image edges with the patient directions (R/L, A/P,
        S/I). No letters without it.
    """
    if ct_hu.shape != mask.shape:
        raise ValueError(f"CT shape {ct_hu.shape} and mask shape {mask.shape} differ")
    d, h, w = _centre(mask > 0)
    sd, sh, sw = (float(s) for s in spacing_dhw_mm)
    views = [
        ("axial", ct_hu[d], mask[d], sh / sw),
        ("coronal", ct_hu[:, h, :], mask[:, h, :], sd / sw),
        ("sagittal", ct_hu[:, :, w], mask[:, :, w], sd / sh),
    ]
    # Array axes shown along each view's (rows, columns): 0 = D, 1 = H, 2 = W.
    shown_axes = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}
    indices = {"axial": (d, ct_hu.shape[0]), "coronal": (h, ct_hu.shape[1]), "sagittal": (w, ct_hu.shape[2])}
    # No pyplot (no global backend state in a service), and fixed panel positions with
    # figure-level titles: tight_layout and axis titles measure tick labels the views never
    # show, which took most of the drawing time.
    figure = Figure(figsize=(12, 4.4))
    width = 1.0 / 3.0
    for panel, (title, image, contour, aspect) in enumerate(views):
        axis = figure.add_axes((panel * width + 0.005, 0.01, width - 0.01, 0.83))
        axis.set_axis_off()
        origin: Literal["upper", "lower"] = "upper" if title == "axial" or not superior_last else "lower"
        axis.imshow(image, cmap="gray", vmin=-160, vmax=240, aspect=aspect, origin=origin)
        if contour.any():
            axis.contour(contour.astype(float), levels=[0.5], colors="#ff3030", linewidths=1.0, origin=origin)
        index, count = indices[title]
        figure.text((panel + 0.5) * width, 0.86, f"{title} ({index + 1} of {count})", ha="center", fontsize=12)
        if direction is not None:
            row_axis, column_axis = shown_axes[title]
            _letter_edges(axis, direction, row_axis, column_axis, rows_point_up=origin == "lower")
    volume_cc = float(mask.sum()) * sd * sh * sw / 1000.0
    figure.text(0.5, 0.94, f"SATs prediction (research use only): {volume_cc:.1f} cc", ha="center", fontsize=14)
    figure.savefig(path, dpi=90)


def _centre(foreground: np.ndarray) -> tuple[int, int, int]:
    """Return the rounded centroid index of ``foreground``, or the volume centre if it is empty."""
    total = int(foreground.sum())
    if total == 0:
        return tuple(int(n) // 2 for n in foreground.shape)  # type: ignore[return-value]
    centre = []
    for axis, length in enumerate(foreground.shape):
        others = tuple(a for a in range(foreground.ndim) if a != axis)
        profile = foreground.sum(axis=others, dtype=np.int64)  # voxels per index along this axis
        centre.append(round(float(np.dot(np.arange(length), profile)) / total))
    return tuple(centre)  # type: ignore[return-value]


_LPS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))  # (negative, positive) along x, y, z


def _letter(vector: np.ndarray) -> str:
    """Return the patient direction (R, L, A, P, I or S) closest to an LPS ``vector``."""
    main = int(np.argmax(np.abs(vector)))
    return _LPS_LETTERS[main][int(vector[main] > 0)]


def _letter_edges(axis: object, direction: np.ndarray, row_axis: int, column_axis: int, rows_point_up: bool) -> None:
    """Write the patient direction at the four edges of one view."""
    lps_of_array_axis = {0: direction[:, 2], 1: direction[:, 1], 2: direction[:, 0]}  # (D, H, W) -> LPS
    right = lps_of_array_axis[column_axis]
    up = lps_of_array_axis[row_axis] if rows_point_up else -lps_of_array_axis[row_axis]
    style = {"color": "#ffd000", "fontsize": 11, "fontweight": "bold", "transform": axis.transAxes}  # type: ignore[attr-defined]
    axis.text(0.98, 0.5, _letter(right), ha="right", va="center", **style)  # type: ignore[attr-defined]
    axis.text(0.02, 0.5, _letter(-right), ha="left", va="center", **style)  # type: ignore[attr-defined]
    axis.text(0.5, 0.98, _letter(up), ha="center", va="top", **style)  # type: ignore[attr-defined]
    axis.text(0.5, 0.02, _letter(-up), ha="center", va="bottom", **style)  # type: ignore[attr-defined]

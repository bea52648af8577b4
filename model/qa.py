"""QA picture: axial, coronal and sagittal CT views with the predicted contour."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_qa_png(
    ct_hu: np.ndarray,
    mask: np.ndarray,
    spacing_dhw_mm: Sequence[float],
    path: Path,
    superior_last: bool = True,
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
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if ct_hu.shape != mask.shape:
        raise ValueError(f"CT shape {ct_hu.shape} and mask shape {mask.shape} differ")
    foreground = np.argwhere(mask > 0)
    centre = foreground.mean(axis=0).round().astype(int) if len(foreground) else np.array(ct_hu.shape) // 2
    d, h, w = (int(c) for c in centre)
    sd, sh, sw = (float(s) for s in spacing_dhw_mm)
    views = [
        ("axial", ct_hu[d], mask[d], sh / sw),
        ("coronal", ct_hu[:, h, :], mask[:, h, :], sd / sw),
        ("sagittal", ct_hu[:, :, w], mask[:, :, w], sd / sh),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for axis, (title, image, contour, aspect) in zip(axes, views, strict=True):
        origin = "upper" if title == "axial" or not superior_last else "lower"
        axis.imshow(image, cmap="gray", vmin=-160, vmax=240, aspect=aspect, origin=origin)
        if contour.any():
            axis.contour(contour.astype(float), levels=[0.5], colors="#ff3030", linewidths=1.0, origin=origin)
        axis.set_title(title)
        axis.set_axis_off()
    volume_cc = float(mask.sum()) * sd * sh * sw / 1000.0
    figure.suptitle(f"SATs prediction (research use only): {volume_cc:.1f} cc")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)

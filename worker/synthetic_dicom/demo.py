"""The demo head-and-neck CT series that the command line and the pipeline tests write."""

from __future__ import annotations

from pathlib import Path

from worker.synthetic_dicom.geometry import SeriesGeometry, Vector
from worker.synthetic_dicom.phantom import HeadNeck, render_phantom
from worker.synthetic_dicom.writer import write_ct_series

#: Volume centre of the demo series (LPS, mm), off the origin so that readers must use it.
DEMO_CENTRE_LPS_MM: Vector = (0.0, 20.0, -120.0)


def demo_geometry() -> SeriesGeometry:
    """Return the grid of the demo series: HFS, 60 x 160 x 160 voxels of 3 x 1.5 x 1.5 mm."""
    return SeriesGeometry.axial(
        "HFS",
        rows=160,
        columns=160,
        slices=60,
        pixel_spacing_mm=(1.5, 1.5),
        slice_spacing_mm=3.0,
        centre_lps_mm=DEMO_CENTRE_LPS_MM,
    )


def demo_anatomy() -> HeadNeck:
    """Return the demo anatomy: a left-sided lesion, turned by 5 degrees and shifted 4 mm left."""
    x, y, z = DEMO_CENTRE_LPS_MM
    return HeadNeck(centre_lps_mm=(x + 4.0, y, z), yaw_deg=5.0, lesion_side="left")


def write_demo_series(out_dir: str | Path, *, seed: int = 0) -> list[Path]:
    """Write the demo head-and-neck CT (no patient data) to ``out_dir`` as explicit VR little endian.

    The UIDs derive from ``seed``, so a second run over the same folder rewrites the
    same files. The lesion truth is ``render_mask(demo_geometry(), demo_anatomy().lesion())``.

    Returns
    -------
    list of pathlib.Path
        The 60 files. Element ``k`` contains slice ``k``, and slices run from feet to head.
    """
    geometry = demo_geometry()
    volume = render_phantom(geometry, [demo_anatomy()], noise_sd_hu=10.0, seed=seed)
    return write_ct_series(volume, geometry, out_dir, uid_seed=f"sats-demo-{seed}", overwrite=True)

"""Synthetic CT Image Storage series with exactly known geometry (no patient data).

The demo writes a phantom head-and-neck CT with :func:`write_demo_series`, and the tests
of the series reader and of the RTSTRUCT and SEG writers compare contours with the known
patient coordinates of :class:`SeriesGeometry`.

Conventions: volumes are ``(D, H, W)`` = (slice, row, column) arrays of HU. Points and
directions are in the DICOM patient frame (LPS, mm): x to the patient's left, y to
posterior, z to the head. Voxel ``(k, i, j)`` has its centre at::

    image_position(k) + j * pixel_spacing_mm[1] * row_direction
                      + i * pixel_spacing_mm[0] * column_direction

which is the Image Plane module's rule for slice ``k`` (PS3.3 C.7.6.2.1.1).

Modules: :mod:`.geometry` defines the series grid, :mod:`.phantom` the phantom objects
and their rendering, :mod:`.writer` the DICOM encoding and :mod:`.demo` the demo series.
"""

from worker.synthetic_dicom.demo import DEMO_CENTRE_LPS_MM, demo_anatomy, demo_geometry, write_demo_series
from worker.synthetic_dicom.geometry import AXIAL_ORIENTATIONS, FloatArray, SeriesGeometry, Vector
from worker.synthetic_dicom.phantom import Ball, Ellipsoid, HeadNeck, PhantomObject, Rod, render_mask, render_phantom
from worker.synthetic_dicom.writer import SUPPORTED_TRANSFER_SYNTAXES, ExternalToolError, write_ct_series

__all__ = [
    "AXIAL_ORIENTATIONS",
    "DEMO_CENTRE_LPS_MM",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "Ball",
    "Ellipsoid",
    "ExternalToolError",
    "FloatArray",
    "HeadNeck",
    "PhantomObject",
    "Rod",
    "SeriesGeometry",
    "Vector",
    "demo_anatomy",
    "demo_geometry",
    "render_mask",
    "render_phantom",
    "write_ct_series",
    "write_demo_series",
]

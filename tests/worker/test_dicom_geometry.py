"""Known objects in every orientation and encoding: read, contour, and land on the truth.

Each case writes a synthetic CT series with a ball and a tilted rod at known patient
coordinates, reads it with the series reader, thresholds the objects, writes the RTSTRUCT
and the SEG, reads both back and compares positions with the truth in the patient frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)

from worker.contours import polygon_area
from worker.rtstruct import AlgorithmInfo, RoiSpec, build_rtstruct
from worker.seg import SegmentSpec, build_seg
from worker.series import read_ct_series
from worker.synthetic_dicom import AXIAL_ORIENTATIONS, Ball, Rod, SeriesGeometry, render_phantom, write_ct_series

CENTRE = (6.0, -8.0, 10.0)
BALL = Ball(centre_lps_mm=(14.0, -2.0, 12.0), radius_mm=8.0, hu=900.0)
ROD_POINT = np.array([-3.0, -17.0, 10.0])
ROD_DIRECTION = np.array([0.15, 0.1, 1.0]) / np.linalg.norm([0.15, 0.1, 1.0])
ROD = Rod(point_lps_mm=tuple(ROD_POINT), direction=tuple(ROD_DIRECTION), radius_mm=4.0, hu=900.0)
PIXEL_SPACING = (1.1, 0.9)  # (between rows, between columns), deliberately unequal
SLICE_SPACING = 1.5

ENCODINGS = {
    "implicit-le": (ImplicitVRLittleEndian, True),
    "explicit-le": (ExplicitVRLittleEndian, True),
    "explicit-be": (ExplicitVRBigEndian, True),
    "no-part10-header": (ImplicitVRLittleEndian, False),
    "jpeg-lossless": (JPEGLosslessSV1, True),
    "jpeg2000": (JPEG2000Lossless, True),
    "rle": (RLELossless, True),
}


def _geometry(orientation: str) -> SeriesGeometry:
    size = {"rows": 48, "columns": 56, "slices": 28}
    if orientation == "oblique":
        return SeriesGeometry.oblique(
            (12.0, -9.0, 20.0),
            pixel_spacing_mm=PIXEL_SPACING,
            slice_spacing_mm=SLICE_SPACING,
            centre_lps_mm=CENTRE,
            **size,
        )
    return SeriesGeometry.axial(
        orientation, pixel_spacing_mm=PIXEL_SPACING, slice_spacing_mm=SLICE_SPACING, centre_lps_mm=CENTRE, **size
    )


CASES = [(orientation, "explicit-le") for orientation in [*AXIAL_ORIENTATIONS, "oblique"]]
CASES += [
    (orientation, encoding) for encoding in ENCODINGS if encoding != "explicit-le" for orientation in ("HFS", "oblique")
]


def _contours(rtstruct: pydicom.Dataset) -> list[tuple[np.ndarray, str]]:
    """Return each contour as ``(K, 3)`` LPS points with the SOP Instance UID it references."""
    found = []
    for item in rtstruct.ROIContourSequence[0].ContourSequence:
        points = np.asarray([float(v) for v in item.ContourData]).reshape(-1, 3)
        found.append((points, str(item.ContourImageSequence[0].ReferencedSOPInstanceUID)))
    return found


def _plane_area_centroid(points: np.ndarray, row: np.ndarray, column: np.ndarray) -> tuple[float, np.ndarray]:
    """Return the signed area (mm2) and area centroid (LPS) of a planar polygon."""
    origin = points[0]
    uv = np.stack([(points - origin) @ column, (points - origin) @ row], axis=1)  # (row, col)-like axes
    area = polygon_area(uv)
    u, v = uv[:, 0], uv[:, 1]
    cross = u * np.roll(v, -1) - np.roll(u, -1) * v
    cu = float(((u + np.roll(u, -1)) * cross).sum()) / (6 * area)
    cv = float(((v + np.roll(v, -1)) * cross).sum()) / (6 * area)
    return area, origin + cu * column + cv * row


def _rod_axis_at(plane_point: np.ndarray, normal: np.ndarray) -> np.ndarray:
    step = float((plane_point - ROD_POINT) @ normal) / float(ROD_DIRECTION @ normal)
    return ROD_POINT + step * ROD_DIRECTION


def _in_voxels(error_lps: np.ndarray, row: np.ndarray, column: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Express an LPS error vector in voxels along the grid axes (column, row, slice)."""
    return np.abs(
        [error_lps @ row / PIXEL_SPACING[1], error_lps @ column / PIXEL_SPACING[0], error_lps @ normal / SLICE_SPACING]
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("geometry")
    folders = {}
    for orientation, encoding in CASES:
        geometry = _geometry(orientation)
        volume = render_phantom(geometry, [BALL, ROD], background_hu=0.0)
        syntax, part10 = ENCODINGS[encoding]
        folder = root / f"{orientation}-{encoding}"
        write_ct_series(volume, geometry, folder, transfer_syntax=syntax, part10=part10, shuffle_names=True)
        folders[(orientation, encoding)] = folder
    return folders


@pytest.mark.parametrize(("orientation", "encoding"), CASES)
def test_contours_land_on_known_objects(written, tmp_path, orientation, encoding):
    ct = read_ct_series(written[(orientation, encoding)])
    mask = (ct.hu > 450).astype(np.uint8)
    rtstruct_path = tmp_path / "rtstruct.dcm"
    build_rtstruct(ct.datasets, mask, RoiSpec(), AlgorithmInfo("geometry-test", "1")).save_as(
        rtstruct_path, enforce_file_format=True
    )
    rtstruct = pydicom.dcmread(rtstruct_path)

    direction = np.asarray(ct.image.GetDirection()).reshape(3, 3)
    row, column, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    positions = {str(d.SOPInstanceUID): np.asarray(d.ImagePositionPatient, dtype=float) for d in ct.datasets}
    ball_area = 0.0
    ball_moment = np.zeros(3)
    rod_contours = 0
    for points, uid in _contours(rtstruct):
        plane_distance = np.abs((points - positions[uid]) @ normal)
        assert plane_distance.max() < 1e-3, f"contour off its slice {uid}"
        area, centroid = _plane_area_centroid(points, row, column)
        rod_axis = _rod_axis_at(positions[uid], normal)
        if np.linalg.norm(centroid - rod_axis) < np.linalg.norm(centroid - np.asarray(BALL.centre_lps_mm)):
            error = _in_voxels(centroid - rod_axis, row, column, normal)
            assert error.max() <= 0.5, f"rod contour centroid off by {error} voxels on {uid}"
            rod_contours += 1
        else:
            ball_area += area
            ball_moment += area * centroid
    assert rod_contours >= 20
    ball_error = _in_voxels(ball_moment / ball_area - np.asarray(BALL.centre_lps_mm), row, column, normal)
    assert ball_error.max() <= 0.5, f"ball centroid off by {ball_error} voxels"


@pytest.mark.parametrize("orientation", ["HFS", "FFP", "HFDL", "oblique"])
def test_seg_frames_match_slices(written, orientation):
    ct = read_ct_series(written[(orientation, "explicit-le")])
    mask = (ct.hu > 450).astype(np.uint8)
    seg = build_seg(ct.datasets, mask, SegmentSpec("GTV", (255, 0, 0), "geometry-test", "1"), "test")
    by_uid = {str(d.SOPInstanceUID): (k, d) for k, d in enumerate(ct.datasets)}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    assert int(seg.NumberOfFrames) == int(mask.any(axis=(1, 2)).sum())
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k, dataset = by_uid[str(source)]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in dataset.ImagePositionPatient], atol=1e-4)
        assert np.array_equal(frame, mask[k])

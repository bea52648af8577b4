"""Tests of the synthetic CT series writer: geometry, encodings, validity and the demo series.

The tools are real: pydicom reads every file back, DCMTK encodes big endian and JPEG
Lossless, and dciodvfy (Debian package dicom3tools) checks the CT Image IOD.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)

from worker.synthetic_dicom import (
    AXIAL_ORIENTATIONS,
    Ball,
    ExternalToolError,
    HeadNeck,
    Rod,
    SeriesGeometry,
    demo_anatomy,
    demo_geometry,
    render_mask,
    render_phantom,
    write_ct_series,
    write_demo_series,
)

#: (transfer syntax, part10) pairs that write_ct_series supports.
ENCODINGS = [
    (ImplicitVRLittleEndian, True),
    (ExplicitVRLittleEndian, True),
    (ExplicitVRBigEndian, True),
    (ImplicitVRLittleEndian, False),
    (ExplicitVRLittleEndian, False),
    (ExplicitVRBigEndian, False),
    (JPEGLosslessSV1, True),
    (JPEG2000Lossless, True),
    (RLELossless, True),
]
ENCODING_IDS = [f"{uid.name}{'' if part10 else ' (no header)'}" for uid, part10 in ENCODINGS]

#: (bits stored, signed, intercept): the stored range maps onto HU low..high.
PIXEL_FORMATS = [
    (12, False, -1024.0),
    (12, True, 0.0),
    (16, False, -1024.0),
    (16, True, 0.0),
]


def read_slice(path: Path) -> Dataset:
    """Read one file with pydicom, naming the guessed transfer syntax of a bare dataset."""
    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta = FileMetaDataset()
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif little:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    return ds


def hu_of(ds: Dataset) -> np.ndarray:
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def centres_from_files(datasets: list[Dataset]) -> np.ndarray:
    """Return ``(D, H, W, 3)`` voxel centres computed only from the files' Image Plane attributes."""
    first = datasets[0]
    row = np.array(first.ImageOrientationPatient[:3], dtype=float)
    column = np.array(first.ImageOrientationPatient[3:], dtype=float)
    between_rows, between_columns = (float(s) for s in first.PixelSpacing)
    i = np.arange(first.Rows)[:, None, None]
    j = np.arange(first.Columns)[None, :, None]
    planes = [
        np.array(ds.ImagePositionPatient, dtype=float) + j * between_columns * row + i * between_rows * column
        for ds in datasets
    ]
    return np.stack(planes)


def run_dciodvfy(path: Path) -> list[str]:
    """Return the lines of dciodvfy's output that report an error."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy not found on PATH; install the Debian package dicom3tools")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def small_geometry(**overrides: object) -> SeriesGeometry:
    arguments: dict = dict(rows=32, columns=40, slices=3, pixel_spacing_mm=(0.8, 0.6), slice_spacing_mm=2.5)
    arguments.update(overrides)
    return SeriesGeometry.axial("HFS", **arguments)


# --- Geometry ------------------------------------------------------------------------

GRID = dict(rows=4, columns=6, slices=3, pixel_spacing_mm=(0.8, 0.6), slice_spacing_mm=2.5, centre_lps_mm=(10, -20, 30))

# Hand-computed: voxel (0, 0, 0) = centre - 2.5 * 0.6 * row - 1.5 * 0.8 * column - 1 * 2.5 * normal.
GEOMETRY_TABLE = [
    ("HFS", SeriesGeometry.axial("HFS", **GRID), (8.5, -21.2, 27.5), (11.5, -18.8, 32.5)),
    ("FFS", SeriesGeometry.axial("FFS", **GRID), (11.5, -21.2, 32.5), (8.5, -18.8, 27.5)),
    ("HFP", SeriesGeometry.axial("HFP", **GRID), (11.5, -18.8, 27.5), (8.5, -21.2, 32.5)),
    ("HFDL", SeriesGeometry.axial("HFDL", **GRID), (8.8, -18.5, 27.5), (11.2, -21.5, 32.5)),
    ("HFS reversed", SeriesGeometry.axial("HFS", slice_step_sign=-1, **GRID), (8.5, -21.2, 32.5), (11.5, -18.8, 27.5)),
    # 30 degrees about x: column = (0, cos 30, sin 30), normal = (0, -sin 30, cos 30).
    (
        "oblique x30",
        SeriesGeometry.oblique((30.0, 0.0, 0.0), **GRID),
        (8.5, -19.78923048, 27.23493649),
        (11.5, -20.21076952, 32.76506351),
    ),
]


@pytest.mark.parametrize(("name", "geometry", "first", "last"), GEOMETRY_TABLE, ids=[c[0] for c in GEOMETRY_TABLE])
def test_geometry_corner_voxels(name: str, geometry: SeriesGeometry, first: tuple, last: tuple) -> None:
    centres = geometry.voxel_centres_lps()
    assert centres.shape == (3, 4, 6, 3)
    np.testing.assert_allclose(centres[0, 0, 0], first, atol=1e-7)
    np.testing.assert_allclose(centres[-1, -1, -1], last, atol=1e-7)
    np.testing.assert_allclose(centres.mean(axis=(0, 1, 2)), (10, -20, 30), atol=1e-9)
    np.testing.assert_allclose(geometry.image_position(0), first, atol=1e-7)


def test_geometry_pixel_spacing_order() -> None:
    geometry = SeriesGeometry.axial("HFS", **GRID)
    centres = geometry.voxel_centres_lps()
    # Next column: 0.6 mm along x (second Pixel Spacing value); next row: 0.8 mm along y.
    np.testing.assert_allclose(centres[0, 0, 1], (9.1, -21.2, 27.5), atol=1e-9)
    np.testing.assert_allclose(centres[0, 1, 0], (8.5, -20.4, 27.5), atol=1e-9)
    np.testing.assert_allclose(centres[1, 0, 0], (8.5, -21.2, 30.0), atol=1e-9)


@pytest.mark.parametrize("position", sorted(AXIAL_ORIENTATIONS))
def test_axial_orientations_are_rotations(position: str) -> None:
    geometry = SeriesGeometry.axial(position, **GRID)
    row, column, normal = np.array(geometry.row_direction), np.array(geometry.column_direction), geometry.normal
    assert np.linalg.det(np.stack([row, column, normal])) == pytest.approx(1.0)
    assert row[2] == 0.0
    assert column[2] == 0.0
    expected_z = 1.0 if position.startswith("HF") else -1.0
    np.testing.assert_allclose(normal, (0.0, 0.0, expected_z), atol=1e-12)


def test_decubitus_left_has_left_side_down() -> None:
    # Image columns point down to the table; lying on the left side puts +x (left) down.
    assert SeriesGeometry.axial("HFDL", **GRID).column_direction == (1.0, 0.0, 0.0)
    assert SeriesGeometry.axial("FFDL", **GRID).column_direction == (1.0, 0.0, 0.0)
    assert SeriesGeometry.axial("HFDR", **GRID).column_direction == (-1.0, 0.0, 0.0)


def test_gantry_tilt_shears_stack(tmp_path: Path) -> None:
    tilt = 20.0
    geometry = SeriesGeometry.axial("HFS", **{**GRID, "rows": 32, "columns": 32}, gantry_tilt_deg=tilt)
    step = geometry.image_position(1) - geometry.image_position(0)
    column = np.array(geometry.column_direction)
    # The table moves along z, and each plane starts 2.5 * tan(20 deg) further along the column direction.
    np.testing.assert_allclose(step, (0.0, 0.0, 2.5 / math.cos(math.radians(tilt))), atol=1e-9)
    assert float(step @ column) == pytest.approx(2.5 * math.tan(math.radians(tilt)))
    assert float(step @ geometry.normal) == pytest.approx(2.5)
    assert float(step @ np.array(geometry.row_direction)) == pytest.approx(0.0, abs=1e-12)

    paths = write_ct_series(np.zeros(geometry.shape), geometry, tmp_path)
    datasets = [read_slice(p) for p in paths]
    assert float(datasets[0].GantryDetectorTilt) == pytest.approx(tilt)
    written_step = np.array(datasets[1].ImagePositionPatient, dtype=float) - np.array(
        datasets[0].ImagePositionPatient, dtype=float
    )
    np.testing.assert_allclose(written_step, step, atol=1e-6)


def test_geometry_rejects_bad_directions() -> None:
    with pytest.raises(ValueError, match="unit vector"):
        SeriesGeometry(2, 2, 2, (1, 1), 1, (2, 0, 0), (0, 1, 0))
    with pytest.raises(ValueError, match="not orthogonal"):
        SeriesGeometry(2, 2, 2, (1, 1), 1, (1, 0, 0), (0.6, 0.8, 0))
    with pytest.raises(ValueError, match="patient_position"):
        SeriesGeometry.axial("XYZ", **GRID)
    with pytest.raises(ValueError, match="rows"):
        SeriesGeometry(0, 2, 2, (1, 1), 1, (1, 0, 0), (0, 1, 0))


# --- Phantom objects -----------------------------------------------------------------

CENTROID_GEOMETRIES = {
    "HFS": SeriesGeometry.axial(
        "HFS", rows=48, columns=56, slices=16, pixel_spacing_mm=(1.2, 1.0), slice_spacing_mm=2.0
    ),
    "FFS": SeriesGeometry.axial(
        "FFS", rows=48, columns=56, slices=16, pixel_spacing_mm=(1.2, 1.0), slice_spacing_mm=2.0
    ),
    "HFDL": SeriesGeometry.axial(
        "HFDL", rows=48, columns=56, slices=16, pixel_spacing_mm=(1.2, 1.0), slice_spacing_mm=2.0
    ),
    "HFS reversed": SeriesGeometry.axial(
        "HFS", rows=48, columns=56, slices=16, pixel_spacing_mm=(1.2, 1.0), slice_spacing_mm=2.0, slice_step_sign=-1
    ),
    "HFS tilted": SeriesGeometry.axial(
        "HFS", rows=48, columns=56, slices=16, pixel_spacing_mm=(1.2, 1.0), slice_spacing_mm=2.0, gantry_tilt_deg=15
    ),
    "oblique": SeriesGeometry.oblique(
        (10.0, -20.0, 30.0), rows=48, columns=56, slices=16, pixel_spacing_mm=(1.2, 1.0), slice_spacing_mm=2.0
    ),
}


@pytest.mark.parametrize("name", sorted(CENTROID_GEOMETRIES))
def test_ball_centroid_in_written_series(name: str, tmp_path: Path) -> None:
    geometry = CENTROID_GEOMETRIES[name]
    ball = Ball(centre_lps_mm=(7.3, -5.1, 3.7), radius_mm=9.0, hu=800.0)
    volume = render_phantom(geometry, [ball])
    paths = write_ct_series(volume, geometry, tmp_path)

    datasets = [read_slice(p) for p in paths]
    hu = np.stack([hu_of(ds) for ds in datasets])
    inside = hu > 0
    centroid = centres_from_files(datasets)[inside].mean(axis=0)
    error = centroid - np.array(ball.centre_lps_mm)
    assert abs(float(error @ np.array(geometry.row_direction))) <= geometry.pixel_spacing_mm[1] / 2
    assert abs(float(error @ np.array(geometry.column_direction))) <= geometry.pixel_spacing_mm[0] / 2
    assert abs(float(error @ geometry.normal)) <= geometry.slice_spacing_mm / 2
    assert np.count_nonzero(inside) == np.count_nonzero(render_mask(geometry, ball))


def test_rod_along_z_fixed_pixel() -> None:
    geometry = SeriesGeometry.axial("HFS", rows=20, columns=20, slices=5, pixel_spacing_mm=(1, 1), slice_spacing_mm=3)
    volume = render_phantom(geometry, [Rod(point_lps_mm=(2.5, -3.5, 0), direction=(0, 0, 1), radius_mm=0.6, hu=500)])
    # Voxel centres run from -9.5 to 9.5 mm, so (2.5, -3.5) is column 12, row 6.
    for k in range(geometry.slices):
        assert list(zip(*np.nonzero(volume[k] == 500), strict=True)) == [(6, 12)]


def test_head_neck_lesion_on_patient_left() -> None:
    geometry = demo_geometry()
    lesion = demo_anatomy().lesion()
    assert lesion is not None
    mask = render_mask(geometry, lesion)
    centroid = geometry.voxel_centres_lps()[mask].mean(axis=0)
    assert centroid[0] > demo_anatomy().centre_lps_mm[0] + 10.0  # LPS +x is the patient's left
    assert HeadNeck(lesion_side="none").lesion() is None


# --- Encodings -----------------------------------------------------------------------


def full_range_volume(shape: tuple[int, int, int], bits: int, signed: bool, intercept: float) -> np.ndarray:
    low = -(2 ** (bits - 1)) if signed else 0
    high = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    volume = np.random.default_rng(1).integers(low, high + 1, size=shape).astype(np.float64) + intercept
    volume[0, 0, 0] = low + intercept
    volume[0, 0, 1] = high + intercept
    return volume


@pytest.mark.parametrize(("transfer_syntax", "part10"), ENCODINGS, ids=ENCODING_IDS)
@pytest.mark.parametrize(("bits", "signed", "intercept"), PIXEL_FORMATS, ids=lambda v: str(v))
def test_encoding_reads_back_exactly(
    transfer_syntax: UID, part10: bool, bits: int, signed: bool, intercept: float, tmp_path: Path
) -> None:
    geometry = small_geometry()
    volume = full_range_volume(geometry.shape, bits, signed, intercept)
    paths = write_ct_series(
        volume,
        geometry,
        tmp_path,
        transfer_syntax=transfer_syntax,
        part10=part10,
        bits_stored=bits,
        signed=signed,
        rescale_intercept=intercept,
    )
    for k, path in enumerate(paths):
        with path.open("rb") as handle:
            has_preamble = handle.read(132)[128:] == b"DICM"
        assert has_preamble == part10
        ds = read_slice(path)
        assert ds.file_meta.TransferSyntaxUID == transfer_syntax
        assert ds.BitsStored == bits
        assert ds.PixelRepresentation == int(signed)
        np.testing.assert_array_equal(hu_of(ds), volume[k])


@pytest.mark.parametrize(("transfer_syntax", "part10"), ENCODINGS, ids=ENCODING_IDS)
def test_dciodvfy_reports_no_errors(transfer_syntax: UID, part10: bool, tmp_path: Path) -> None:
    geometry = small_geometry(slices=2)
    paths = write_ct_series(
        np.zeros(geometry.shape), geometry, tmp_path, transfer_syntax=transfer_syntax, part10=part10
    )
    assert run_dciodvfy(paths[1]) == []


def test_per_slice_intercept_and_slope(tmp_path: Path) -> None:
    geometry = small_geometry()
    intercepts = [-1024.0, -1000.0, -1010.5]
    volume = np.stack([np.full(geometry.shape[1:], value) for value in (-3.5, 0.0, 12.5)])
    paths = write_ct_series(volume, geometry, tmp_path, rescale_intercept=intercepts, rescale_slope=0.5)
    for k, path in enumerate(paths):
        ds = read_slice(path)
        assert float(ds.RescaleIntercept) == intercepts[k]
        assert float(ds.RescaleSlope) == 0.5
        np.testing.assert_array_equal(hu_of(ds), volume[k])


def test_missing_dcmtk_names_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.synthetic_dicom.writer.shutil.which", lambda name: None)
    geometry = small_geometry()
    with pytest.raises(ExternalToolError, match="dcmtk") as caught:
        write_ct_series(np.zeros(geometry.shape), geometry, tmp_path, transfer_syntax=JPEGLosslessSV1)
    assert caught.value.code == "tool.missing"
    assert not any(tmp_path.iterdir())


# --- Header attributes ---------------------------------------------------------------


def test_image_plane_attributes(tmp_path: Path) -> None:
    geometry = SeriesGeometry.axial("FFS", **{**GRID, "rows": 8, "columns": 8})
    paths = write_ct_series(np.zeros(geometry.shape), geometry, tmp_path)
    for k, path in enumerate(paths):
        ds = read_slice(path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.PatientPosition == "FFS"
        assert ds.PatientName == "SATS^PHANTOM"
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], (-1, 0, 0, 0, 1, 0))
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], (0.8, 0.6))
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], geometry.image_position(k), atol=1e-9)
        # FFS has normal -z, so Slice Location is -z.
        assert float(ds.SliceLocation) == pytest.approx(-geometry.image_position(k)[2])
        assert ds.InstanceNumber == k + 1


@pytest.mark.parametrize(
    ("order", "expected"), [("ascending", [1, 2, 3]), ("reversed", [3, 2, 1]), ("constant", [1, 1, 1])]
)
def test_instance_number_order(order: str, expected: list[int], tmp_path: Path) -> None:
    geometry = small_geometry()
    paths = write_ct_series(np.zeros(geometry.shape), geometry, tmp_path, instance_number_order=order)
    assert [read_slice(p).InstanceNumber for p in paths] == expected


def test_shuffled_names_keep_slice_order(tmp_path: Path) -> None:
    geometry = small_geometry(slices=6)
    paths = write_ct_series(np.zeros(geometry.shape), geometry, tmp_path, shuffle_names=True, seed=3)
    assert [p.name for p in paths] != sorted(p.name for p in paths)
    for k, path in enumerate(paths):
        position = [float(v) for v in read_slice(path).ImagePositionPatient]
        np.testing.assert_allclose(position, geometry.image_position(k), atol=1e-9)


@pytest.mark.parametrize(
    ("character_set", "name"),
    [
        ("ISO_IR 100", "Müller^Jürgen"),
        ("ISO_IR 192", "Łukasz^Żółć=山田"),
        (("", "ISO 2022 IR 87"), "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ],
    ids=["latin-1", "utf-8", "iso-2022-jp"],
)
def test_non_ascii_patient_name(character_set: str | tuple[str, ...], name: str, tmp_path: Path) -> None:
    geometry = small_geometry(slices=1)
    paths = write_ct_series(
        np.zeros(geometry.shape), geometry, tmp_path, patient_name=name, character_set=character_set
    )
    assert str(read_slice(paths[0]).PatientName) == name
    assert run_dciodvfy(paths[0]) == []


def test_same_uid_seed_gives_identical_files(tmp_path: Path) -> None:
    geometry = small_geometry()
    first = write_ct_series(np.zeros(geometry.shape), geometry, tmp_path / "a", uid_seed="x")
    second = write_ct_series(np.zeros(geometry.shape), geometry, tmp_path / "b", uid_seed="x")
    third = write_ct_series(np.zeros(geometry.shape), geometry, tmp_path / "c")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert read_slice(first[0]).SeriesInstanceUID != read_slice(third[0]).SeriesInstanceUID


# --- Argument checks -----------------------------------------------------------------


def test_write_rejects_invalid_arguments(tmp_path: Path) -> None:
    geometry = small_geometry()
    zeros = np.zeros(geometry.shape)
    with pytest.raises(ValueError, match="shape"):
        write_ct_series(np.zeros((1, 2, 3)), geometry, tmp_path)
    with pytest.raises(ValueError, match="not integral"):
        write_ct_series(zeros + 0.25, geometry, tmp_path)
    with pytest.raises(ValueError, match="outside the 12-bit unsigned range"):
        write_ct_series(zeros - 2000, geometry, tmp_path)
    with pytest.raises(ValueError, match="part10=False"):
        write_ct_series(zeros, geometry, tmp_path, transfer_syntax=RLELossless, part10=False)
    with pytest.raises(ValueError, match="32 rows"):
        write_ct_series(
            np.zeros((1, 8, 8)), small_geometry(slices=1, rows=8, columns=8), tmp_path, transfer_syntax=JPEG2000Lossless
        )
    with pytest.raises(ValueError, match="cannot be encoded"):
        write_ct_series(zeros, geometry, tmp_path, patient_name="山田", character_set="ISO_IR 100")
    with pytest.raises(ValueError, match="not supported"):
        write_ct_series(zeros, geometry, tmp_path, transfer_syntax="1.2.840.10008.1.2.4.50")
    assert not any(tmp_path.iterdir())


def test_write_rejects_non_empty_folder(tmp_path: Path) -> None:
    geometry = small_geometry()
    (tmp_path / "other.dcm").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not empty"):
        write_ct_series(np.zeros(geometry.shape), geometry, tmp_path)
    with pytest.raises(FileExistsError, match="would not replace"):
        write_ct_series(np.zeros(geometry.shape), geometry, tmp_path, overwrite=True)


# --- Demo series ---------------------------------------------------------------------


def test_demo_series(tmp_path: Path) -> None:
    paths = write_demo_series(tmp_path)
    assert len(paths) == 60
    first = read_slice(paths[0])
    assert (first.Rows, first.Columns) == (160, 160)
    assert first.PatientPosition == "HFS"
    assert first.PatientName == "SATS^PHANTOM"
    np.testing.assert_allclose([float(v) for v in first.ImagePositionPatient], demo_geometry().image_position(0))
    assert run_dciodvfy(paths[30]) == []

    # The lesion (65 HU) lies where the anatomy places it, up to the 10 HU noise.
    geometry = demo_geometry()
    lesion = demo_anatomy().lesion()
    assert lesion is not None
    mask = render_mask(geometry, lesion)
    hu = np.stack([hu_of(read_slice(p)) for p in paths])
    assert float(hu[mask].mean()) == pytest.approx(65.0, abs=2.0)

    # A second run over the same folder rewrites identical files.
    before = [p.read_bytes() for p in paths]
    again = write_demo_series(tmp_path)
    assert [p.read_bytes() for p in again] == before

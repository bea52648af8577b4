"""RTSTRUCT writer: write-then-read-back, geometry on any orientation, dciodvfy and a plastimatch round trip."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from matplotlib.path import Path as PolygonPath
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from model import __version__
from model.errors import OutputError
from tests.conftest import shared_path
from worker.rtstruct import AlgorithmInfo, RoiSpec, build_rtstruct, format_ds, format_ds_values

ALGORITHM = AlgorithmInfo(name="sats-test-model", version="1.2.3")

AXIAL_HFS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
AXIAL_FFS = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
DECUBITUS_HFDL = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0)
OBLIQUE = (0.6, 0.8, 0.0, 0.0, 0.0, -1.0)


def _rotated_orientation() -> tuple[float, ...]:
    """IOP of a grid rotated by 25 degrees about the axis (1, 2, 3), rounded to 6 decimals."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    angle = np.radians(25.0)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    return tuple(round(float(v), 6) for v in np.concatenate([rotation[:, 0], rotation[:, 1]]))


def make_ct_slices(
    orientation: Sequence[float],
    first_position: Sequence[float],
    count: int = 3,
    rows: int = 12,
    columns: int = 10,
    pixel_spacing: tuple[float, float] = (0.5, 0.8),
    step_mm: float = 2.5,
) -> list[Dataset]:
    """Build CT slice headers (no pixel data) stepping ``step_mm`` along the slice normal."""
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    slices = []
    for index in range(count):
        position = np.asarray(first_position, dtype=np.float64) + index * step_mm * normal
        dataset = Dataset()
        dataset.SOPClassUID = CTImageStorage
        dataset.SOPInstanceUID = generate_uid()
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.FrameOfReferenceUID = frame_uid
        dataset.Modality = "CT"
        dataset.PatientName = "Test^Patient"
        dataset.PatientID = "TEST-001"
        dataset.PatientBirthDate = "19700101"
        dataset.PatientSex = "F"
        dataset.StudyDate = "20240522"
        dataset.StudyTime = "130514"
        dataset.StudyID = "S1"
        dataset.AccessionNumber = "A1"
        dataset.ReferringPhysicianName = ""
        dataset.Rows = rows
        dataset.Columns = columns
        dataset.PixelSpacing = [f"{v:.4f}" for v in pixel_spacing]
        dataset.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        dataset.ImagePositionPatient = [f"{v:.4f}" for v in position]
        slices.append(dataset)
    return slices


def sort_along_normal(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Sort CT slices by ImagePositionPatient projected on the slice normal (row x column)."""
    orientation = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    return sorted(datasets, key=lambda d: float(np.asarray([float(v) for v in d.ImagePositionPatient]) @ normal))


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=np.float64)


def _contour_points(contour: Dataset) -> np.ndarray:
    return _floats(contour.ContourData).reshape(-1, 3)


def _plane_distances(points: np.ndarray, ct_slice: Dataset) -> np.ndarray:
    orientation = _floats(ct_slice.ImageOrientationPatient)
    normal = np.cross(orientation[:3], orientation[3:])
    normal /= np.linalg.norm(normal)
    return np.abs((points - _floats(ct_slice.ImagePositionPatient)) @ normal)


def _patient_to_index(points: np.ndarray, ct_slice: Dataset) -> np.ndarray:
    """Map LPS points on a slice back to ``(row, col)`` indices by least squares."""
    orientation = _floats(ct_slice.ImageOrientationPatient)
    row_spacing, column_spacing = _floats(ct_slice.PixelSpacing)
    basis = np.column_stack([orientation[3:] * row_spacing, orientation[:3] * column_spacing])
    solution, *_ = np.linalg.lstsq(basis, (points - _floats(ct_slice.ImagePositionPatient)).T, rcond=None)
    return solution.T


def _rasterise(rtstruct: Dataset, ct_datasets: Sequence[Dataset]) -> np.ndarray:
    """Fill the contours back onto the CT grid at pixel centres by the even-odd rule."""
    index_of = {str(d.SOPInstanceUID): k for k, d in enumerate(ct_datasets)}
    rows, columns = int(ct_datasets[0].Rows), int(ct_datasets[0].Columns)
    grid_r, grid_c = np.mgrid[:rows, :columns]
    centres = np.column_stack([grid_r.ravel(), grid_c.ravel()]).astype(np.float64)
    filled = np.zeros((len(ct_datasets), rows * columns), dtype=bool)
    for contour in rtstruct.ROIContourSequence[0].get("ContourSequence", []):
        k = index_of[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
        polygon = _patient_to_index(_contour_points(contour), ct_datasets[k])
        filled[k] ^= PolygonPath(polygon).contains_points(centres)
    return filled.reshape(len(ct_datasets), rows, columns)


def _blob_mask(shape: tuple[int, int, int], seed: int = 3) -> np.ndarray:
    """A random mask with several components and holes on the ``(D, H, W)`` grid."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.55
    mask[:, 0, :] = False
    mask[0] = False
    return mask


def _write_read(dataset: Dataset, path: Path) -> Dataset:
    dataset.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


# Synthetic geometry


@pytest.mark.parametrize(
    ("orientation", "first_position", "expected"),
    [
        (
            AXIAL_HFS,
            (-100.0, -50.0, 20.0),
            [(-98.0, -49.25, 20.0), (-98.0, -48.75, 20.0), (-97.2, -48.75, 20.0), (-97.2, -49.25, 20.0)],
        ),
        (
            AXIAL_FFS,
            (100.0, -50.0, -20.0),
            [(98.0, -49.25, -20.0), (98.0, -48.75, -20.0), (97.2, -48.75, -20.0), (97.2, -49.25, -20.0)],
        ),
        (
            DECUBITUS_HFDL,
            (-60.0, 80.0, 10.0),
            [(-59.25, 78.0, 10.0), (-58.75, 78.0, 10.0), (-58.75, 77.2, 10.0), (-59.25, 77.2, 10.0)],
        ),
        (
            OBLIQUE,
            (10.0, 20.0, 30.0),
            [(11.2, 21.6, 29.25), (11.2, 21.6, 28.75), (11.68, 22.24, 28.75), (11.68, 22.24, 29.25)],
        ),
    ],
    ids=["axial-hfs", "axial-ffs", "decubitus-hfdl", "oblique"],
)
def test_single_pixel_hand_computed_points(orientation, first_position, expected):
    # Pixel (row 2, column 3) on the first slice, PixelSpacing 0.5 mm (rows) x 0.8 mm (columns):
    # its corners are the indices (1.5, 2.5), (2.5, 2.5), (2.5, 3.5), (1.5, 3.5).
    slices = make_ct_slices(orientation, first_position)
    mask = np.zeros((3, 12, 10), dtype=bool)
    mask[0, 2, 3] = True

    rtstruct = build_rtstruct(slices, mask, RoiSpec(), ALGORITHM)

    contours = rtstruct.ROIContourSequence[0].ContourSequence
    assert len(contours) == 1
    assert contours[0].NumberOfContourPoints == 4
    np.testing.assert_allclose(_contour_points(contours[0]), np.asarray(expected), atol=1e-6)
    assert contours[0].ContourImageSequence[0].ReferencedSOPInstanceUID == slices[0].SOPInstanceUID


@pytest.mark.parametrize(
    "orientation",
    [AXIAL_HFS, AXIAL_FFS, DECUBITUS_HFDL, OBLIQUE, _rotated_orientation()],
    ids=["axial-hfs", "axial-ffs", "decubitus-hfdl", "oblique", "rotated"],
)
def test_points_lie_in_referenced_slice_plane(orientation):
    slices = make_ct_slices(orientation, (-37.5, 12.25, -80.0), count=5, rows=16, columns=14)
    mask = _blob_mask((5, 16, 14))

    rtstruct = build_rtstruct(slices, mask, RoiSpec(), ALGORITHM)

    uids = [str(d.SOPInstanceUID) for d in slices]
    contours = rtstruct.ROIContourSequence[0].ContourSequence
    assert len(contours) > 5
    for number, contour in enumerate(contours):
        points = _contour_points(contour)
        distances = np.stack([_plane_distances(points, ct_slice) for ct_slice in slices])
        referenced = uids.index(str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID))
        assert distances[referenced].max() < 1e-3, f"contour {number} is off its slice plane"
        others = np.delete(distances, referenced, axis=0)
        assert others.min() > 2.0, f"contour {number} is near a slice it does not reference"


@pytest.mark.parametrize(
    "orientation",
    [AXIAL_HFS, AXIAL_FFS, DECUBITUS_HFDL, _rotated_orientation()],
    ids=["axial-hfs", "axial-ffs", "decubitus-hfdl", "rotated"],
)
def test_even_odd_fill_restores_mask(orientation):
    slices = make_ct_slices(orientation, (5.0, -7.0, 3.0), count=4, rows=18, columns=15)
    mask = _blob_mask((4, 18, 15), seed=11)

    rtstruct = build_rtstruct(slices, mask, RoiSpec(), ALGORITHM)

    assert np.array_equal(_rasterise(rtstruct, slices), mask)


def test_descending_slice_order_accepted():
    slices = make_ct_slices(AXIAL_HFS, (0.0, 0.0, 0.0), count=4)
    mask = _blob_mask((4, 12, 10), seed=5)

    ascending = build_rtstruct(slices, mask, RoiSpec(), ALGORITHM)
    descending = build_rtstruct(slices[::-1], mask[::-1], RoiSpec(), ALGORITHM)

    def by_slice(rtstruct: Dataset) -> dict[str, list[list[float]]]:
        contours: dict[str, list[list[float]]] = {}
        for contour in rtstruct.ROIContourSequence[0].ContourSequence:
            uid = str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
            contours.setdefault(uid, []).append(sorted(float(v) for v in contour.ContourData))
        return {uid: sorted(items) for uid, items in contours.items()}

    assert by_slice(ascending) == by_slice(descending)


# Write-then-read-back on synthetic slices


def test_read_back_structure_set_modules(tmp_path):
    slices = make_ct_slices(OBLIQUE, (1.0, 2.0, 3.0), count=3)
    mask = np.zeros((3, 12, 10), dtype=bool)
    mask[1, 3:8, 2:7] = True
    mask[1, 5, 4] = False
    roi = RoiSpec(name="GTVnx_test", color=(10, 20, 30))

    rtstruct = _write_read(
        build_rtstruct(slices, mask, roi, ALGORITHM, series_instance_uid="1.2.3.4", sop_instance_uid="1.2.3.5"),
        tmp_path / "rtss.dcm",
    )

    assert rtstruct.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert rtstruct.SOPClassUID == RTStructureSetStorage
    assert rtstruct.SOPInstanceUID == "1.2.3.5"
    assert rtstruct.Modality == "RTSTRUCT"
    assert rtstruct.StudyInstanceUID == slices[0].StudyInstanceUID
    assert rtstruct.SeriesInstanceUID == "1.2.3.4"
    assert rtstruct.FrameOfReferenceUID == slices[0].FrameOfReferenceUID
    assert rtstruct.SeriesNumber == 901
    assert "research use only" in rtstruct.SeriesDescription
    assert rtstruct.Manufacturer == "SATs"
    assert rtstruct.SoftwareVersions == __version__
    assert rtstruct.ApprovalStatus == "UNAPPROVED"

    roi_item = rtstruct.StructureSetROISequence[0]
    assert roi_item.ROINumber == 1
    assert roi_item.ROIName == "GTVnx_test"
    assert roi_item.ReferencedFrameOfReferenceUID == slices[0].FrameOfReferenceUID
    assert roi_item.ROIGenerationAlgorithm == "AUTOMATIC"
    assert roi_item.ROIGenerationDescription == "sats-test-model 1.2.3"
    algorithm = roi_item.ROIDerivationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "sats-test-model"
    assert algorithm.AlgorithmVersion == "1.2.3"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"

    roi_contour = rtstruct.ROIContourSequence[0]
    assert roi_contour.ReferencedROINumber == 1
    assert list(roi_contour.ROIDisplayColor) == [10, 20, 30]
    assert len(roi_contour.ContourSequence) == 2  # outer boundary and one hole
    for contour in roi_contour.ContourSequence:
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        assert contour.NumberOfContourPoints >= 4
        assert len(contour.ContourData) == 3 * contour.NumberOfContourPoints
        assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == slices[1].SOPInstanceUID
        assert contour.ContourImageSequence[0].ReferencedSOPClassUID == CTImageStorage

    observation = rtstruct.RTROIObservationsSequence[0]
    assert observation.ReferencedROINumber == 1
    assert observation.RTROIInterpretedType == "GTV"
    assert observation.ROIInterpreter == ""


def test_read_back_references_every_slice(tmp_path):
    slices = make_ct_slices(AXIAL_HFS, (0.0, 0.0, 0.0), count=7)
    mask = np.zeros((7, 12, 10), dtype=bool)
    mask[3, 4:6, 4:6] = True

    rtstruct = _write_read(build_rtstruct(slices, mask, RoiSpec(), ALGORITHM), tmp_path / "rtss.dcm")

    frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == slices[0].FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == slices[0].StudyInstanceUID
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == slices[0].SeriesInstanceUID
    referenced = [str(item.ReferencedSOPInstanceUID) for item in series.ContourImageSequence]
    assert referenced == [str(d.SOPInstanceUID) for d in slices]
    assert {str(item.ReferencedSOPClassUID) for item in series.ContourImageSequence} == {CTImageStorage}


def test_read_back_patient_and_study_copied(tmp_path):
    slices = make_ct_slices(AXIAL_HFS, (0.0, 0.0, 0.0), count=2)
    for ct_slice in slices:
        ct_slice.IssuerOfPatientID = "HOSPITAL-A"
        other = Dataset()
        other.PatientID = "OTHER-7"
        other.TypeOfPatientID = "TEXT"
        ct_slice.OtherPatientIDsSequence = DicomSequence([other])
        ct_slice.PatientIdentityRemoved = "YES"
        ct_slice.DeidentificationMethod = "research pseudonymisation"
        ct_slice.StudyDescription = "RT planning head and neck"
    mask = np.zeros((2, 12, 10), dtype=bool)

    rtstruct = _write_read(build_rtstruct(slices, mask, RoiSpec(), ALGORITHM), tmp_path / "rtss.dcm")

    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "IssuerOfPatientID",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
    ):
        assert rtstruct[keyword].value == slices[0][keyword].value, keyword
    assert rtstruct.OtherPatientIDsSequence[0].PatientID == "OTHER-7"
    assert "SpecificCharacterSet" not in rtstruct


def test_latin1_patient_name_round_trips(tmp_path):
    name = "Müller^Jürgen"
    headers = make_ct_slices(AXIAL_HFS, (0.0, 0.0, 0.0), count=2)
    slices = []
    for index, header in enumerate(headers):
        header.SpecificCharacterSet = "ISO_IR 100"
        header.PatientName = name
        header.file_meta = FileMetaDataset()
        header.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        header.file_meta.MediaStorageSOPClassUID = header.SOPClassUID
        header.file_meta.MediaStorageSOPInstanceUID = header.SOPInstanceUID
        path = tmp_path / f"ct{index}.dcm"
        header.save_as(path, enforce_file_format=True)
        assert "Müller".encode("latin-1") in path.read_bytes()
        slices.append(pydicom.dcmread(path))
    mask = np.zeros((2, 12, 10), dtype=bool)
    mask[0, 2:4, 2:4] = True

    path = tmp_path / "rtss.dcm"
    rtstruct = _write_read(build_rtstruct(slices, mask, RoiSpec(), ALGORITHM), path)

    assert rtstruct.SpecificCharacterSet == "ISO_IR 100"
    assert str(rtstruct.PatientName) == name
    assert "Müller^Jürgen".encode("latin-1") in path.read_bytes()


def test_empty_mask_roi_without_contours(tmp_path):
    slices = make_ct_slices(AXIAL_HFS, (0.0, 0.0, 0.0), count=3)

    rtstruct = _write_read(
        build_rtstruct(slices, np.zeros((3, 12, 10), dtype=bool), RoiSpec(), ALGORITHM), tmp_path / "rtss.dcm"
    )

    assert rtstruct.StructureSetROISequence[0].ROIName == "GTVnx_SATs"
    assert rtstruct.RTROIObservationsSequence[0].RTROIInterpretedType == "GTV"
    assert len(rtstruct.ROIContourSequence) == 1
    assert "ContourSequence" not in rtstruct.ROIContourSequence[0]
    series = rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert len(series.ContourImageSequence) == 3


def test_contour_data_within_ds_length(tmp_path):
    # Positions far from the origin need all 16 characters of a DS value.
    slices = make_ct_slices(_rotated_orientation(), (-98765.4321, 87654.3219, -76543.2198), count=3)
    mask = _blob_mask((3, 12, 10), seed=8)

    path = tmp_path / "rtss.dcm"
    rtstruct = _write_read(build_rtstruct(slices, mask, RoiSpec(), ALGORITHM), path)

    lengths = [len(str(v)) for contour in rtstruct.ROIContourSequence[0].ContourSequence for v in contour.ContourData]
    assert max(lengths) <= 16
    assert max(lengths) >= 12


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, "0"),
        (-0.0000001, "0"),
        (1.5, "1.5"),
        (-123.4567891, "-123.456789"),
        (12345678.1234564, "12345678.123456"),
        (-123456789.123456, "-123456789.12346"),
        (1e15, "1000000000000000"),
    ],
)
def test_format_ds_values(value, expected):
    text = format_ds(value)

    assert text == expected
    assert len(text) <= 16


@pytest.mark.parametrize("scale", [1e-6, 1.0, 300.0, 1e8])
def test_format_ds_values_matches_one_by_one(scale):
    """The batch formatter gives the same text as :func:`format_ds`, on both of its paths."""
    values = np.random.default_rng(7).normal(0.0, scale, 2000)
    values[:6] = [0.0, -0.0, -1e-7, 2.0, -2.5, 9999999.9999996]

    assert format_ds_values(values) == "\\".join(format_ds(float(v)) for v in values)


def test_format_ds_values_rejects_nan():
    with pytest.raises(OutputError) as error:
        format_ds_values(np.array([1.0, float("nan")]))

    assert error.value.code == "output.invalid_number"


@pytest.mark.parametrize("value", [1e17, float("nan"), float("inf")])
def test_format_ds_rejects_unwritable(value):
    with pytest.raises(OutputError) as error:
        format_ds(value)

    assert error.value.code == "output.invalid_number"


# Input validation


def _set(keyword: str, value: object):
    def change(slices: list[Dataset], index: int = 1) -> None:
        setattr(slices[index], keyword, value)

    return change


def _delete(keyword: str):
    def change(slices: list[Dataset], index: int = 1) -> None:
        delattr(slices[index], keyword)

    return change


def _swap(slices: list[Dataset]) -> None:
    slices[0], slices[1] = slices[1], slices[0]


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        (_set("SeriesInstanceUID", "1.2.999"), "output.inconsistent_slices", "1.2.999"),
        (_set("StudyInstanceUID", "1.2.998"), "output.inconsistent_slices", "1.2.998"),
        (_set("FrameOfReferenceUID", "1.2.997"), "output.inconsistent_slices", "1.2.997"),
        (_set("Rows", 13), "output.shape_mismatch", "13 x 10"),
        (_set("ImageOrientationPatient", ["0", "1", "0", "0", "0", "-1"]), "output.inconsistent_slices", "orientation"),
        (_set("PixelSpacing", ["0", "0.8"]), "output.invalid_geometry", "PixelSpacing"),
        (_set("ImagePositionPatient", ["1", "2"]), "output.invalid_geometry", "ImagePositionPatient"),
        (_delete("ImagePositionPatient"), "output.missing_attribute", "ImagePositionPatient"),
        (_delete("SOPInstanceUID"), "output.missing_attribute", "SOPInstanceUID"),
        (_swap, "output.unsorted_slices", "not sorted"),
    ],
    ids=[
        "series",
        "study",
        "frame",
        "rows",
        "orientation",
        "spacing",
        "position-length",
        "no-position",
        "no-uid",
        "unsorted",
    ],
)
def test_invalid_slices_rejected(change, code, message):
    slices = make_ct_slices(AXIAL_HFS, (0.0, 0.0, 0.0), count=3)
    change(slices)

    with pytest.raises(OutputError, match=message) as error:
        build_rtstruct(slices, np.zeros((3, 12, 10), dtype=bool), RoiSpec(), ALGORITHM)

    assert error.value.code == code


@pytest.mark.parametrize(
    ("mask", "code"),
    [
        (np.zeros((2, 12, 10), dtype=bool), "output.shape_mismatch"),
        (np.zeros((3, 10, 12), dtype=bool), "output.shape_mismatch"),
        (np.zeros((12, 10), dtype=bool), "output.shape_mismatch"),
        (np.full((3, 12, 10), 0.7, dtype=np.float32), "output.invalid_mask"),
        (np.full((3, 12, 10), 2, dtype=np.uint8), "output.invalid_mask"),
    ],
    ids=["slice-count", "rows-columns", "two-d", "float", "label-2"],
)
def test_invalid_mask_rejected(mask, code):
    slices = make_ct_slices(AXIAL_HFS, (0.0, 0.0, 0.0), count=3)

    with pytest.raises(OutputError) as error:
        build_rtstruct(slices, mask, RoiSpec(), ALGORITHM)

    assert error.value.code == code


def test_no_slices_rejected():
    with pytest.raises(OutputError) as error:
        build_rtstruct([], np.zeros((0, 12, 10), dtype=bool), RoiSpec(), ALGORITHM)

    assert error.value.code == "output.no_slices"


def test_integer_mask_accepted():
    slices = make_ct_slices(AXIAL_HFS, (0.0, 0.0, 0.0), count=2)
    mask = np.zeros((2, 12, 10), dtype=np.uint8)
    mask[1, 2:5, 2:5] = 1

    rtstruct = build_rtstruct(slices, mask, RoiSpec(), ALGORITHM)

    assert len(rtstruct.ROIContourSequence[0].ContourSequence) == 1


@pytest.mark.parametrize(
    "arguments",
    [
        {"name": ""},
        {"name": "x" * 65},
        {"name": "GTV\\1"},
        {"name": "GTVé"},
        {"color": (0, 0, 256)},
        {"interpreted_type": "gtv"},
    ],
    ids=["empty-name", "long-name", "backslash", "non-ascii", "color", "type"],
)
def test_roi_spec_rejects_invalid(arguments):
    with pytest.raises(ValueError, match="ROI"):
        RoiSpec(**arguments)


def test_algorithm_info_rejects_long_description():
    with pytest.raises(ValueError, match="64 characters"):
        AlgorithmInfo(name="m" * 60, version="1.0.0")


# Real CT: dciodvfy and the plastimatch round trip


@pytest.fixture(scope="module")
def pycerr_slices() -> tuple[list[Dataset], np.ndarray]:
    """The pyCERR CT slices sorted along the normal and their ``(D, H, W)`` HU volume."""
    folder = shared_path("hn-ct-pycerr")
    slices = sort_along_normal([pydicom.dcmread(path) for path in sorted(folder.glob("IMG_*.dcm"))])
    hu = np.stack(
        [d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices]
    )
    return slices, hu


@pytest.fixture(scope="module")
def nasopharynx_mask(pycerr_slices) -> np.ndarray:
    """Soft tissue (-100 to 100 HU) in a 60 mm box around the nasopharynx, z -100 to -70 mm.

    Air and bone inside the box leave holes, so the contours include hole polygons.
    """
    slices, hu = pycerr_slices
    z = np.asarray([float(d.ImagePositionPatient[2]) for d in slices])
    mask = np.zeros(hu.shape, dtype=bool)
    box = (np.flatnonzero(np.abs(z + 85.0) <= 15.0), np.arange(185, 245), np.arange(210, 270))
    inside = hu[np.ix_(*box)]
    mask[np.ix_(*box)] = (inside > -100) & (inside < 100)
    return mask


def _require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH; install the Debian package {package} (apt-get install {package})")
    return path


@pytest.mark.shared_data
@pytest.mark.parametrize("empty", [False, True], ids=["nasopharynx", "empty"])
def test_dciodvfy_reports_no_errors(pycerr_slices, nasopharynx_mask, tmp_path, empty):
    dciodvfy = _require_tool("dciodvfy", "dicom3tools")
    slices, _ = pycerr_slices
    mask = np.zeros_like(nasopharynx_mask) if empty else nasopharynx_mask
    path = tmp_path / "rtss.dcm"
    build_rtstruct(slices, mask, RoiSpec(), ALGORITHM).save_as(path, enforce_file_format=True)

    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60, check=False)

    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == [], "dciodvfy errors:\n" + "\n".join(errors) + "\nall output:\n" + "\n".join(lines)


@pytest.mark.shared_data
def test_plastimatch_rasterises_back_to_mask(pycerr_slices, nasopharynx_mask, tmp_path):
    plastimatch = _require_tool("plastimatch", "plastimatch")
    slices, _ = pycerr_slices
    rtstruct = build_rtstruct(slices, nasopharynx_mask, RoiSpec(), ALGORITHM)
    slice_of = {str(d.SOPInstanceUID): d for d in slices}
    holes = 0
    for contour in rtstruct.ROIContourSequence[0].ContourSequence:
        ct_slice = slice_of[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
        holes += _signed_area_in_plane(_contour_points(contour), ct_slice) < 0
    assert holes > 0, "the test mask should contain holes"
    path = tmp_path / "rtss.dcm"
    rtstruct.save_as(path, enforce_file_format=True)
    ct_folder = tmp_path / "ct"
    ct_folder.mkdir()
    for source in sorted(shared_path("hn-ct-pycerr").glob("IMG_*.dcm")):
        (ct_folder / source.name).symlink_to(source.resolve())

    # plastimatch takes the union of the contours of a slice unless --xor-contours is given.
    command = [
        plastimatch,
        "convert",
        "--input",
        str(path),
        "--referenced-ct",
        str(ct_folder),
        "--xor-contours",
        "--prefix-format",
        "nrrd",
        "--output-prefix",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr

    rasterised = sitk.ReadImage(str(tmp_path / "out" / "GTVnx_SATs.nrrd"))
    on_ct_grid = sitk.Resample(rasterised, _ct_grid(slices), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    restored = sitk.GetArrayFromImage(on_ct_grid) > 0  # (D, H, W) in the order of `slices`
    overlap = np.logical_and(restored, nasopharynx_mask).sum()
    dsc = 2.0 * overlap / (restored.sum() + nasopharynx_mask.sum())
    # Contours on pixel edges leave no pixel centre on a boundary, so the fill should be exact.
    # The margin only allows for rounding in the rasteriser.
    assert dsc >= 0.999, f"DSC {dsc:.5f}: {restored.sum()} voxels back, {nasopharynx_mask.sum()} in the mask"


def _signed_area_in_plane(points: np.ndarray, ct_slice: Dataset) -> float:
    indices = _patient_to_index(points, ct_slice)
    rows, cols = indices[:, 0], indices[:, 1]
    return 0.5 * float(np.sum(rows * np.roll(cols, -1) - np.roll(rows, -1) * cols))


def _ct_grid(slices: Sequence[Dataset]) -> sitk.Image:
    """An empty image on the grid of the sorted CT slices (origin at the first slice)."""
    orientation = _floats(slices[0].ImageOrientationPatient)
    normal = np.cross(orientation[:3], orientation[3:])
    first, second = _floats(slices[0].ImagePositionPatient), _floats(slices[1].ImagePositionPatient)
    row_spacing, column_spacing = _floats(slices[0].PixelSpacing)
    grid = sitk.Image([int(slices[0].Columns), int(slices[0].Rows), len(slices)], sitk.sitkUInt8)
    grid.SetOrigin(first.tolist())
    grid.SetSpacing([column_spacing, row_spacing, float((second - first) @ normal)])
    # Direction columns: (row direction, column direction, slice normal) -> row-major 3x3.
    grid.SetDirection(np.column_stack([orientation[:3], orientation[3:], normal]).ravel().tolist())
    return grid

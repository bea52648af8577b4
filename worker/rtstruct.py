"""RT Structure Set (RTSTRUCT) of the predicted mask, one ROI with planar contours per CT slice.

highdicom has no RT Structure Set class, so the instance is built on
:class:`highdicom.base.SOPClass` (patient, study, series, equipment and SOP common
attributes) and the RT modules are added with pydicom. The structure set belongs to the
study and Frame of Reference of the CT and is a new series.

Contours follow the pixel boundaries of the mask (see :mod:`worker.contours`). Holes are
separate contours, and the contours of one slice encode the mask by the even-odd rule:
a point belongs to the ROI when it lies inside an odd number of that slice's contours.
Readers that fill nested contours this way restore the holes. A reader that takes the
union of the contours fills the holes instead, as plastimatch 1.9.4 does unless
``plastimatch convert`` is given ``--xor-contours``. NOTE: import into Eclipse and
RayStation has not been tested.

Save the result with ``dataset.save_as(path, enforce_file_format=True)``: the file meta
information is set for Explicit VR Little Endian.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.base import SOPClass
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage

from model import __version__
from model.errors import OutputError
from worker.contours import trace_slice

logger = logging.getLogger(__name__)

#: Referenced SOP Class UID of the RT Referenced Study Sequence item: Detached Study
#: Management (retired), the value RTSTRUCT writers commonly use. dciodvfy accepts it.
STUDY_REFERENCE_SOP_CLASS_UID = "1.2.840.10008.3.1.2.3.1"

#: Largest difference between the ImageOrientationPatient values of two slices.
ORIENTATION_TOLERANCE = 1e-3

#: Decimal places written for contour coordinates (mm), fewer when a value needs the room.
COORDINATE_DECIMALS = 6

#: Maximum length of a DS (decimal string) value in characters.
DS_MAX_LENGTH = 16

#: Patient and Clinical Trial Subject module attributes copied from the CT when present.
PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientBirthDateInAlternativeCalendar",
    "PatientDeathDateInAlternativeCalendar",
    "PatientAlternativeCalendar",
    "PatientSex",
    "ReferencedPatientSequence",
    "QualityControlSubject",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "EthnicGroupCodeSequence",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "StrainDescription",
    "StrainNomenclature",
    "StrainStockSequence",
    "StrainAdditionalInformation",
    "StrainCodeSequence",
    "GeneticModificationsSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "SourcePatientGroupIdentificationSequence",
    "GroupOfPatientsIdentificationSequence",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID",
    "IssuerOfClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "IssuerOfClinicalTrialSubjectReadingID",
    "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
)

#: General Study, Patient Study and Clinical Trial Study module attributes copied from the CT.
STUDY_KEYWORDS = (
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName",
    "StudyDescription",
    "PhysiciansOfRecord",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription",
)

#: Attributes every CT slice needs to place and reference its contours.
REQUIRED_SLICE_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
)


@dataclass(frozen=True)
class RoiSpec:
    """Name, display colour and RT ROI Interpreted Type of the one ROI written.

    Raises
    ------
    ValueError
        If the name is empty, longer than 64 characters, not ASCII or contains a
        backslash, if a colour component is outside 0-255, or if the interpreted type is
        not 1-16 upper-case letters, digits, spaces or underscores (DICOM CS).
    """

    name: str = "GTVnx_SATs"
    color: tuple[int, int, int] = (255, 48, 48)
    interpreted_type: str = "GTV"

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64 or not self.name.isascii() or "\\" in self.name:
            raise ValueError(f"ROI name must be 1-64 ASCII characters without a backslash, got {self.name!r}")
        if len(self.color) != 3 or any(not 0 <= int(value) <= 255 for value in self.color):
            raise ValueError(f"ROI color must be three integers 0-255 (R, G, B), got {self.color!r}")
        allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _")
        if not 1 <= len(self.interpreted_type) <= 16 or not set(self.interpreted_type) <= allowed:
            raise ValueError(
                f"ROI interpreted type must be a DICOM code string such as 'GTV', got {self.interpreted_type!r}"
            )


@dataclass(frozen=True)
class AlgorithmInfo:
    """Model that produced the ROI, written to the ROI generation attributes.

    ``family`` is a code from CID 7162 (Surface Processing Algorithm Family).

    Raises
    ------
    ValueError
        If the name or version is empty, or if ``"{name} {version}"`` is longer than the
        64 characters of ROIGenerationDescription.
    """

    name: str
    version: str
    family: Code = codes.cid7162.ArtificialIntelligence

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError(f"algorithm name and version must not be empty, got {self.name!r}, {self.version!r}")
        if len(self.description) > 64:
            raise ValueError(f"algorithm name and version must fit in 64 characters, got {self.description!r}")

    @property
    def description(self) -> str:
        """ROI generation description: the model name and version."""
        return f"{self.name} {self.version}"


def build_rtstruct(
    ct_datasets: Sequence[Dataset],
    mask: np.ndarray,
    roi: RoiSpec,
    algorithm: AlgorithmInfo,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = 901,
    series_description: str = "SATs GTV (research use only, not for clinical use)",
) -> Dataset:
    """Build an RT Structure Set with one ROI whose contours trace ``mask`` on the CT slices.

    Parameters
    ----------
    ct_datasets
        CT slice headers sorted along the slice normal (either direction): ``mask[k]``
        lies on ``ct_datasets[k]``. Pixel data is not needed.
    mask
        ``(D, H, W)`` = (slice, row, column) boolean array, or integers 0 and 1, on the
        CT's own grid: ``H`` is Rows and ``W`` is Columns. Non-zero voxels belong to the ROI.
    roi
        Name, colour and interpreted type of the ROI.
    algorithm
        Model name and version, written to ROIGenerationDescription and to the ROI
        Derivation Algorithm Identification Sequence.
    series_instance_uid, sop_instance_uid
        UIDs of the new series and instance; new UIDs are generated when omitted.
    series_number
        Series number of the RTSTRUCT series (the SEG series uses 902).
    series_description
        Series description; the default marks the series as research use only.

    Returns
    -------
    pydicom.dataset.Dataset
        The RTSTRUCT instance (a :class:`highdicom.base.SOPClass`) with file meta
        information for Explicit VR Little Endian.

    Raises
    ------
    OutputError
        If the slices and the mask do not match, a slice lacks a required attribute,
        the slices do not share one study, series, Frame of Reference and orientation,
        or they are not sorted along the slice normal. ``.code`` names the case.

    Notes
    -----
    Each contour point ``(r, c)`` on slice ``k`` is placed at
    ``IPP_k + c * PixelSpacing[1] * IOP[0:3] + r * PixelSpacing[0] * IOP[3:6]`` with the
    slice's own ImagePositionPatient, so it lies in that slice's plane for any orientation
    and patient position. Every contour references the slice it lies on.

    An empty mask gives a valid structure set in which the ROI is defined but has no
    Contour Sequence, which is Type 3 in the ROI Contour module. NOTE: how treatment
    planning systems import an ROI without contours has not been tested.
    """
    foreground = _check_inputs(ct_datasets, mask)
    reference = ct_datasets[0]

    dataset = SOPClass(
        study_instance_uid=str(reference.StudyInstanceUID),
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        sop_class_uid=RTStructureSetStorage,
        instance_number=1,
        modality="RTSTRUCT",
        manufacturer="SATs",
        manufacturer_model_name="SATs",
        software_versions=__version__,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description,
    )
    _copy_patient_and_study(reference, dataset)
    # Frame of Reference module: the CT's frame, with its position reference (Type 2).
    dataset.FrameOfReferenceUID = reference.FrameOfReferenceUID
    dataset.PositionReferenceIndicator = reference.get("PositionReferenceIndicator", "")
    dataset.OperatorsName = ""  # Type 2 in the RT Series module

    dataset.StructureSetLabel = "SATs GTV"
    dataset.StructureSetName = roi.name
    dataset.StructureSetDate = dataset.InstanceCreationDate
    dataset.StructureSetTime = dataset.InstanceCreationTime
    dataset.ReferencedFrameOfReferenceSequence = DicomSequence([_frame_of_reference_item(ct_datasets)])
    dataset.StructureSetROISequence = DicomSequence([_structure_set_roi_item(reference, roi, algorithm)])

    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ROIDisplayColor = [int(value) for value in roi.color]
    contours = _contour_items(ct_datasets, foreground)
    if contours:
        roi_contour.ContourSequence = DicomSequence(contours)
    dataset.ROIContourSequence = DicomSequence([roi_contour])

    observation = Dataset()
    observation.ObservationNumber = 1
    observation.ReferencedROINumber = 1
    observation.RTROIInterpretedType = roi.interpreted_type
    observation.ROIInterpreter = ""
    dataset.RTROIObservationsSequence = DicomSequence([observation])

    # Approval module: no clinician has reviewed an automatic contour when it is written.
    dataset.ApprovalStatus = "UNAPPROVED"
    _keep_encoded(dataset)

    logger.info(
        "RTSTRUCT %s built for CT series %s (study %s): %d contours on %d of %d slices",
        dataset.SOPInstanceUID,
        reference.SeriesInstanceUID,
        reference.StudyInstanceUID,
        len(contours),
        int(foreground.any(axis=(1, 2)).sum()),
        len(ct_datasets),
    )
    return dataset


def slice_index_to_patient(points_rc: np.ndarray, ct_slice: Dataset) -> np.ndarray:
    """Map ``(K, 2)`` continuous ``(row, col)`` indices on one CT slice to LPS points in mm.

    Uses the slice's own ImagePositionPatient, ImageOrientationPatient and PixelSpacing.
    IOP[0:3] is the direction of increasing column index and PixelSpacing[1] the spacing
    between columns. IOP[3:6] and PixelSpacing[0] belong to the row index.

    Returns
    -------
    numpy.ndarray
        ``(K, 3)`` float64 array of ``(x, y, z)`` patient coordinates.
    """
    points = np.asarray(points_rc, dtype=np.float64)
    position = np.asarray([float(v) for v in ct_slice.ImagePositionPatient], dtype=np.float64)
    orientation = np.asarray([float(v) for v in ct_slice.ImageOrientationPatient], dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in ct_slice.PixelSpacing)
    column_step = orientation[:3] * column_spacing  # mm per column index
    row_step = orientation[3:] * row_spacing  # mm per row index
    return position + points[:, 1:2] * column_step + points[:, 0:1] * row_step


def format_ds(value: float) -> str:
    """Format a number as a DICOM DS value of at most 16 characters.

    Writes up to :data:`COORDINATE_DECIMALS` decimal places, fewer when the integer part
    needs the room, with trailing zeros removed (``-0`` becomes ``0``).

    Raises
    ------
    OutputError
        If ``value`` is not finite or its integer part alone exceeds 16 characters.
    """
    if not math.isfinite(value):
        raise OutputError(f"cannot write {value!r} as a DICOM decimal string", code="output.invalid_number")
    for decimals in range(COORDINATE_DECIMALS, -1, -1):
        text = f"{value:.{decimals}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        if text == "-0":
            text = "0"
        if len(text) <= DS_MAX_LENGTH:
            return text
    raise OutputError(
        f"{value!r} does not fit in the {DS_MAX_LENGTH} characters of a DICOM decimal string",
        code="output.invalid_number",
    )


def _check_inputs(ct_datasets: Sequence[Dataset], mask: np.ndarray) -> np.ndarray:
    """Validate the slices and the mask; return the mask as a boolean ``(D, H, W)`` array."""
    if len(ct_datasets) == 0:
        raise OutputError(
            "no CT slices were given; an RTSTRUCT needs the slices it references", code="output.no_slices"
        )
    array = np.asarray(mask)
    if array.ndim != 3:
        raise OutputError(f"mask must be a 3-D (D, H, W) array, got shape {array.shape}", code="output.shape_mismatch")
    if array.dtype != np.bool_:
        if not np.issubdtype(array.dtype, np.integer):
            raise OutputError(
                f"mask must be boolean or integer 0/1, got dtype {array.dtype}; threshold it first",
                code="output.invalid_mask",
            )
        if array.size and (array.min() < 0 or array.max() > 1):  # two passes; np.unique sorts the whole mask
            values = np.unique(array)
            raise OutputError(
                f"mask must contain only 0 and 1, got values {values[:10].tolist()}", code="output.invalid_mask"
            )
    if array.shape[0] != len(ct_datasets):
        raise OutputError(
            f"mask has {array.shape[0]} slices (shape {array.shape}, D, H, W) but {len(ct_datasets)} CT slices "
            "were given",
            code="output.shape_mismatch",
        )

    for index, ct_slice in enumerate(ct_datasets):
        _check_slice(index, ct_slice, ct_datasets[0], array.shape[1:])
    _check_order(ct_datasets)
    if array.dtype == np.uint8:
        return array.view(np.bool_)  # checked to be 0 and 1 above, so no copy is needed
    return array.astype(bool, copy=False)


def _check_slice(index: int, ct_slice: Dataset, reference: Dataset, shape_hw: tuple[int, ...]) -> None:
    """Check that one slice has its geometry attributes and matches the first slice and the mask."""
    uid = ct_slice.get("SOPInstanceUID", f"at index {index}")
    for keyword in REQUIRED_SLICE_KEYWORDS:
        if ct_slice.get(keyword) in (None, ""):
            raise OutputError(
                f"CT slice {uid} is missing {keyword}, which is needed to place and reference contours",
                code="output.missing_attribute",
            )
    if (int(ct_slice.Rows), int(ct_slice.Columns)) != tuple(shape_hw):
        raise OutputError(
            f"CT slice {uid} is {ct_slice.Rows} x {ct_slice.Columns} (Rows x Columns) but the mask slices are "
            f"{shape_hw[0]} x {shape_hw[1]}",
            code="output.shape_mismatch",
        )
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if str(ct_slice.get(keyword)) != str(reference.get(keyword)):
            raise OutputError(
                f"CT slice {uid} has {keyword} {ct_slice.get(keyword)}, but the first slice has "
                f"{reference.get(keyword)}; all slices must come from one series",
                code="output.inconsistent_slices",
            )
    for keyword, count in (("ImagePositionPatient", 3), ("ImageOrientationPatient", 6), ("PixelSpacing", 2)):
        values = _float_values(ct_slice, keyword)
        if len(values) != count:
            raise OutputError(
                f"CT slice {uid} has {keyword} {values}; expected {count} values", code="output.invalid_geometry"
            )
    spacing = _float_values(ct_slice, "PixelSpacing")
    if min(spacing) <= 0:
        raise OutputError(
            f"CT slice {uid} has PixelSpacing {spacing}; expected positive values", code="output.invalid_geometry"
        )
    orientation = np.asarray(_float_values(ct_slice, "ImageOrientationPatient"))
    first = np.asarray(_float_values(reference, "ImageOrientationPatient"))
    if np.abs(orientation - first).max() > ORIENTATION_TOLERANCE:
        raise OutputError(
            f"CT slice {uid} has ImageOrientationPatient {orientation.tolist()}, but the first slice has "
            f"{first.tolist()}; all slices must have one orientation",
            code="output.inconsistent_slices",
        )


def _float_values(ct_slice: Dataset, keyword: str) -> list[float]:
    """Return a numeric attribute as a list of floats, also when it contains a single value."""
    value = ct_slice[keyword].value
    if isinstance(value, MultiValue | list | tuple):
        return [float(v) for v in value]
    return [float(value)]


def _check_order(ct_datasets: Sequence[Dataset]) -> None:
    """Check that the slice positions along the normal strictly increase or strictly decrease."""
    orientation = np.asarray([float(v) for v in ct_datasets[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.asarray(
        [np.asarray([float(v) for v in d.ImagePositionPatient]) @ normal for d in ct_datasets], dtype=np.float64
    )
    steps = np.diff(positions)
    direction = 1.0 if positions[-1] >= positions[0] else -1.0
    wrong = np.flatnonzero(steps * direction <= 0)
    if len(wrong) == 0:
        return
    bad = int(wrong[0])
    raise OutputError(
        f"CT slices are not sorted along the slice normal: slice {ct_datasets[bad + 1].get('SOPInstanceUID')} at "
        f"{positions[bad + 1]:.3f} mm follows slice {ct_datasets[bad].get('SOPInstanceUID')} at "
        f"{positions[bad]:.3f} mm; pass the slices in volume order with one slice per position",
        code="output.unsorted_slices",
    )


def _copy_patient_and_study(ct_slice: Dataset, dataset: Dataset) -> None:
    """Copy the character set and the patient and study attributes of the CT that are present."""
    if "SpecificCharacterSet" in ct_slice:
        dataset.add(copy.deepcopy(ct_slice["SpecificCharacterSet"]))
    for keyword in PATIENT_KEYWORDS + STUDY_KEYWORDS:
        if keyword in ct_slice:
            dataset.add(copy.deepcopy(ct_slice[keyword]))


def _set_encoded(dataset: Dataset, keyword: str, vr: str, text: str) -> None:
    """Store an element as its encoded bytes (explicit VR little endian), skipping pydicom's value parsing.

    A structure set contains hundreds of thousands of coordinates. Letting pydicom parse and
    validate each DS value took about 70 % of the time to build and write one, so values
    that this module has already formatted (see :func:`format_ds`) are stored encoded.
    Reading the element back parses it as usual.
    """
    padding = b"\0" if vr == "UI" else b" "
    value = text.encode("ascii")
    if len(value) % 2:
        value += padding
    tag = Tag(keyword)
    dataset._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def _keep_encoded(dataset: Dataset) -> None:
    """Mark the items that hold encoded elements as already in the output encoding.

    Without the mark pydicom parses every encoded element again when it writes a new data
    set. The values are ASCII (UI and DS), so the character set does not change them.
    """
    referenced_series = dataset.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    items = list(referenced_series.RTReferencedSeriesSequence[0].ContourImageSequence)
    for contour in dataset.ROIContourSequence[0].get("ContourSequence", []):
        items.append(contour)
        items.extend(contour.ContourImageSequence)
    for item in items:
        item.set_original_encoding(False, True, item._character_set)


def _image_reference(ct_slice: Dataset) -> Dataset:
    item = Dataset()
    _set_encoded(item, "ReferencedSOPClassUID", "UI", str(ct_slice.SOPClassUID))
    _set_encoded(item, "ReferencedSOPInstanceUID", "UI", str(ct_slice.SOPInstanceUID))
    return item


def _frame_of_reference_item(ct_datasets: Sequence[Dataset]) -> Dataset:
    """Build the referenced Frame of Reference item that lists every CT slice."""
    reference = ct_datasets[0]
    series = Dataset()
    series.SeriesInstanceUID = reference.SeriesInstanceUID
    series.ContourImageSequence = DicomSequence([_image_reference(ct_slice) for ct_slice in ct_datasets])

    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_REFERENCE_SOP_CLASS_UID
    study.ReferencedSOPInstanceUID = reference.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])

    frame = Dataset()
    frame.FrameOfReferenceUID = reference.FrameOfReferenceUID
    frame.RTReferencedStudySequence = DicomSequence([study])
    return frame


def _structure_set_roi_item(reference: Dataset, roi: RoiSpec, algorithm: AlgorithmInfo) -> Dataset:
    item = Dataset()
    item.ROINumber = 1
    item.ReferencedFrameOfReferenceUID = reference.FrameOfReferenceUID
    item.ROIName = roi.name
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    item.ROIGenerationDescription = algorithm.description
    item.ROIDerivationAlgorithmIdentificationSequence = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, family=algorithm.family, version=algorithm.version
    )
    return item


#: Values below this magnitude fit in a DS with all :data:`COORDINATE_DECIMALS` decimals:
#: a sign, 7 digits, a point and 6 decimals make 15 characters.
_FULL_PRECISION_LIMIT = 1e7


def format_ds_values(values: np.ndarray) -> str:
    """Format numbers as one backslash-separated DS string, each value as :func:`format_ds` would.

    Contours have tens of thousands of coordinates. When all of them fit at full
    precision, one list comprehension formats them in half the time of a
    :func:`format_ds` call per value.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size == 0:
        return ""
    if not np.all(np.isfinite(flat)) or float(np.abs(flat).max()) >= _FULL_PRECISION_LIMIT:
        return "\\".join(format_ds(float(value)) for value in flat)
    texts = [f"{value:.{COORDINATE_DECIMALS}f}".rstrip("0").rstrip(".") for value in flat.tolist()]
    return "\\".join("0" if text == "-0" else text for text in texts)


def _contour_items(ct_datasets: Sequence[Dataset], foreground: np.ndarray) -> list[Dataset]:
    """Trace every slice of the ``(D, H, W)`` mask and return one Contour Sequence item per polygon."""
    items: list[Dataset] = []
    for ct_slice, slice_mask in zip(ct_datasets, foreground, strict=True):
        if not slice_mask.any():
            continue
        for polygon in trace_slice(slice_mask):
            points = slice_index_to_patient(polygon, ct_slice)
            item = Dataset()
            item.ContourImageSequence = DicomSequence([_image_reference(ct_slice)])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourNumber = len(items) + 1
            _set_encoded(item, "ContourData", "DS", format_ds_values(points))
            items.append(item)
    return items

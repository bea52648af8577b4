"""DICOM Segmentation (SEG) of the predicted mask, written with highdicom."""

from __future__ import annotations

import warnings as python_warnings
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from model.errors import OutputError

#: Series number of the SEG series; the RTSTRUCT series uses 901.
SEG_SERIES_NUMBER = 902


@dataclass(frozen=True)
class SegmentSpec:
    """Label, colour and producer of the one segment written."""

    label: str
    color_rgb: tuple[int, int, int]
    algorithm_name: str
    algorithm_version: str


def build_seg(
    ct_datasets: Sequence[Dataset],
    mask: np.ndarray,
    segment: SegmentSpec,
    software_version: str,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_description: str = "SATs GTV (research use only, not for clinical use)",
) -> Dataset:
    """Build a binary DICOM SEG of ``mask`` that references the CT slices.

    Parameters
    ----------
    ct_datasets
        CT slice headers in volume order: ``mask[k]`` lies on ``ct_datasets[k]``.
    mask
        ``(D, H, W)`` binary mask on the CT's own grid (nonzero = tumour).
    segment
        Segment label, colour and the model that produced it.
    software_version
        Version of this software, written to SoftwareVersions.
    series_instance_uid, sop_instance_uid
        UIDs to use; new ones are generated when omitted.

    Returns
    -------
    pydicom.dataset.Dataset
        The Segmentation instance. Each frame is matched to its source slice by
        position through highdicom's plane positions, which come from the CT headers.

    Notes
    -----
    Frames without tumour are omitted. An empty mask gives a SEG with every frame present
    and all zero, because a SEG needs at least one frame.
    """
    if mask.ndim != 3 or mask.shape[0] != len(ct_datasets):
        raise OutputError(
            f"mask shape {mask.shape} does not match {len(ct_datasets)} CT slices (D, H, W)",
            code="output.shape_mismatch",
        )
    # A uint8 mask of 0 and 1 is used as it is, without a CT-size copy.
    binary = mask.dtype == np.uint8 and mask.size > 0 and mask.max() <= 1
    pixel_array = mask if binary else (mask > 0).astype(np.uint8)
    empty = not pixel_array.any()
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment.label,
        segmented_property_category=codes.cid7150.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=segment.algorithm_name,
            family=codes.cid7162.ArtificialIntelligence,
            version=segment.algorithm_version,
        ),
        anatomic_regions=[codes.SCT.Nasopharynx],
        display_color=hd.color.CIELabColor.from_rgb(*segment.color_rgb),
    )
    try:
        with python_warnings.catch_warnings():
            # highdicom warns about single-component names and quotes the name, which would
            # put patient data into the logs.
            python_warnings.filterwarnings("ignore", message=".*intended person name.*", category=UserWarning)
            seg = hd.seg.Segmentation(
                source_images=list(ct_datasets),
                pixel_array=pixel_array,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=[description],
                series_instance_uid=series_instance_uid or hd.UID(),
                series_number=SEG_SERIES_NUMBER,
                sop_instance_uid=sop_instance_uid or hd.UID(),
                instance_number=1,
                manufacturer="SATs",
                manufacturer_model_name=segment.algorithm_name,
                software_versions=software_version,
                device_serial_number="none",
                content_label="GTV",
                content_description="Nasopharyngeal GTV predicted by SATs",
                omit_empty_frames=not empty,
            )
    except (ValueError, TypeError, AttributeError) as error:
        raise OutputError(f"the DICOM SEG could not be built: {error}", code="output.seg_failed") from error
    seg.SeriesDescription = series_description
    return seg

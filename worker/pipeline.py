"""The main job: a DICOM CT series in, RTSTRUCT, SEG, JSON report and QA picture out.

Stages, each timed in the report: ``load`` (read and check the series), ``symmetrize``,
``preprocess``, ``infer``, ``postprocess`` (probabilities back to the CT grid and
threshold) and ``write`` (RTSTRUCT, SEG, QA picture, report).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from model import __version__
from model.errors import OutputError
from model.geometry import LR_AXIS
from model.predict import Prediction, Predictor
from model.qa import write_qa_png
from worker.inputs import input_folder
from worker.rtstruct import AlgorithmInfo, RoiSpec, build_rtstruct
from worker.seg import SegmentSpec, build_seg
from worker.series import CTSeries, read_ct_series

logger = logging.getLogger(__name__)

RTSTRUCT_FILE = "rtstruct.dcm"
SEG_FILE = "seg.dcm"
REPORT_FILE = "report.json"
QA_FILE = "qa.png"

#: Fraction of the tumour volume on one side of the mid-sagittal plane above which the
#: tumour is reported as left- or right-sided rather than bilateral.
LATERAL_FRACTION = 0.8


@dataclass(frozen=True)
class SegmentOptions:
    """Choices for one segmentation job.

    Attributes
    ----------
    series_uid
        SeriesInstanceUID to segment; by default the CT series is chosen automatically.
    roi_name
        Name of the structure in the RTSTRUCT and label of the SEG segment.
    color_rgb
        Display colour of the structure (0-255 per channel).
    write_seg
        Whether to write the DICOM SEG beside the RTSTRUCT.
    """

    series_uid: str | None = None
    roi_name: str = "GTVnx_SATs"
    color_rgb: tuple[int, int, int] = (255, 48, 48)
    write_seg: bool = True


def laterality(symmetric_mask: np.ndarray) -> tuple[str, float | None]:
    """Return the side of a mask in the symmetric frame and the fraction on the patient's left.

    ``symmetric_mask`` is ``(D, H, W)`` on the symmetric grid, whose W axis runs from the
    patient's right to left with the mid-sagittal plane between the two middle columns.
    The side is ``"left"`` or ``"right"`` when at least :data:`LATERAL_FRACTION` of the
    volume lies on that side, ``"bilateral"`` otherwise and ``"none"`` for an empty mask.
    """
    total = int(symmetric_mask.sum())
    if total == 0:
        return "none", None
    width = symmetric_mask.shape[LR_AXIS]
    left = int(symmetric_mask[..., width // 2 :].sum())  # x > 0 is the patient's left in LPS
    if width % 2:
        left -= int(symmetric_mask[..., width // 2].sum()) // 2  # half of an odd middle column
    fraction = left / total
    if fraction >= LATERAL_FRACTION:
        return "left", fraction
    if fraction <= 1 - LATERAL_FRACTION:
        return "right", fraction
    return "bilateral", fraction


def asymmetry_score(symmetric_mask: np.ndarray) -> float | None:
    """Return the fraction of the mask that has no mirror counterpart (0 symmetric, 1 one-sided)."""
    total = int(symmetric_mask.sum())
    if total == 0:
        return None
    tumour = symmetric_mask.astype(bool)
    # The asymmetry mask m = s AND NOT s' of the training loss, with s' the mirror image.
    unmatched = tumour & ~np.flip(tumour, axis=LR_AXIS)
    return float(unmatched.sum()) / total


def _save(dataset: Dataset, path: Path) -> None:
    """Write ``dataset`` to ``path`` atomically, so a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    dataset.save_as(partial, enforce_file_format=True)
    os.replace(partial, path)


def _write_outputs(
    ct: CTSeries, mask: np.ndarray, algorithm: AlgorithmInfo, options: SegmentOptions, output: Path
) -> dict[str, Any]:
    output.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, Any] = {}

    rtstruct = build_rtstruct(
        ct.datasets,
        mask,
        RoiSpec(name=options.roi_name, color=options.color_rgb, interpreted_type="GTV"),
        algorithm,
    )
    _save(rtstruct, output / RTSTRUCT_FILE)
    outputs["rtstruct"] = {
        "file": RTSTRUCT_FILE,
        "series_instance_uid": str(rtstruct.SeriesInstanceUID),
        "sop_instance_uid": str(rtstruct.SOPInstanceUID),
        "contours": sum(len(item.get("ContourSequence", [])) for item in rtstruct.ROIContourSequence),
    }

    if options.write_seg:
        seg = build_seg(
            ct.datasets,
            mask,
            SegmentSpec(options.roi_name, options.color_rgb, algorithm.name, algorithm.version),
            software_version=__version__,
        )
        _save(seg, output / SEG_FILE)
        outputs["seg"] = {
            "file": SEG_FILE,
            "series_instance_uid": str(seg.SeriesInstanceUID),
            "sop_instance_uid": str(seg.SOPInstanceUID),
            "frames": int(seg.NumberOfFrames),
        }

    superior_last = ct.direction[2, 2] > 0  # slice normal has a +z (head) component
    direction = ct.direction
    write_qa_png(ct.hu, mask, ct.spacing_dhw_mm, output / QA_FILE, superior_last, direction)
    outputs["qa_png"] = QA_FILE
    return outputs


def warm_up() -> None:
    """Do once per process the first-use work that would otherwise fall into a job's timed stages.

    Writes a 4-slice synthetic CT series (no patient data) to a temporary folder, reads it
    back and writes its RTSTRUCT, SEG and QA picture. That loads pydicom's and highdicom's
    tables of the DICOM standard and the picture's fonts, which added about 0.35 s to the
    first job's write stage on 2 cores. The worker calls it after loading the model, and so does
    ``sats segment``, so a job's stage timings show that job's own work.
    """
    from worker.synthetic_dicom.geometry import SeriesGeometry
    from worker.synthetic_dicom.writer import write_ct_series

    started = time.monotonic()
    geometry = SeriesGeometry.axial(
        "HFS", rows=16, columns=16, slices=4, pixel_spacing_mm=(2.0, 2.0), slice_spacing_mm=3.0
    )
    volume = np.full((4, 16, 16), -1000.0, dtype=np.float32)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[1:3, 4:12, 4:12] = True
    volume[mask] = 40.0
    with tempfile.TemporaryDirectory(prefix="sats-warm-up-") as folder:
        write_ct_series(volume, geometry, Path(folder) / "ct", uid_seed="sats-warm-up")
        ct = read_ct_series(Path(folder) / "ct")
        _write_outputs(ct, mask, AlgorithmInfo(name="warm-up", version="0"), SegmentOptions(), Path(folder) / "out")
    logger.info("warmed up the output writers on a synthetic series in %.2f s", time.monotonic() - started)


def freeze_startup_objects() -> None:
    """Exclude every object allocated so far from later garbage collections.

    With the model and the DICOM tables loaded, a process tracks about half a million
    objects. A full collection scans all of them and took about 0.15 s on 2 cores, inside
    whichever job stage set it off. These objects live as long as the process, so freezing
    them (:func:`gc.freeze`) keeps nothing alive that a collection would have freed. Call
    it once, after :func:`warm_up`.
    """
    gc.collect()
    gc.freeze()
    logger.info("froze %d start-up objects out of garbage collection", gc.get_freeze_count())


def _input_summary(ct: CTSeries) -> dict[str, Any]:
    first = ct.datasets[0]
    return {
        "study_instance_uid": ct.study_instance_uid,
        "series_instance_uid": ct.series_instance_uid,
        "frame_of_reference_uid": ct.frame_of_reference_uid,
        "slice_count": ct.slice_count,
        "rows": int(first.Rows),
        "columns": int(first.Columns),
        "spacing_dhw_mm": [round(s, 4) for s in ct.spacing_dhw_mm],
        "image_orientation_patient": [round(float(v), 6) for v in first.ImageOrientationPatient],
        "patient_position": str(first.get("PatientPosition", "") or "") or None,
    }


def _result_summary(ct: CTSeries, prediction: Prediction, predictor: Predictor) -> dict[str, Any]:
    voxel_cc = float(np.prod(ct.spacing_dhw_mm)) / 1000.0
    symmetric_mask = (prediction.symmetric_probabilities >= predictor.info.threshold).astype(np.uint8)
    side, left_fraction = laterality(symmetric_mask)
    score = asymmetry_score(symmetric_mask)
    return {
        "gtv_volume_cc": round(float(prediction.mask.sum()) * voxel_cc, 3),
        "empty": not bool(prediction.mask.any()),
        "slices_with_tumour": int(prediction.mask.any(axis=(1, 2)).sum()),
        "laterality": side,
        "left_fraction": None if left_fraction is None else round(left_fraction, 3),
        "asymmetry_score": None if score is None else round(score, 3),
    }


#: Pipeline stages in order, with the fraction of a typical job done when each starts.
STAGE_PROGRESS = {
    "load": 0.0,
    "symmetrize": 0.05,
    "preprocess": 0.35,
    "infer": 0.4,
    "postprocess": 0.85,
    "write": 0.9,
}


def segment_series(
    input_path: Path,
    output: Path,
    predictor: Predictor,
    options: SegmentOptions | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Segment the CT series in ``input_path`` (folder or zip) and write the results to ``output``.

    Returns the job report, which is also written to ``output/report.json``.
    ``on_stage`` is called with each stage name of :data:`STAGE_PROGRESS` as it starts.

    Raises
    ------
    InputError
        If the series cannot be used (stable ``series.*`` and ``input.*`` codes).
    SymmetrizationError, ModelError, OutputError
        If a later stage fails.
    """
    options = options or SegmentOptions()
    if output.exists() and not output.is_dir():
        raise OutputError(
            f"output {output} exists and is not a folder; give a new or existing folder", code="output.not_a_folder"
        )
    started_job = time.monotonic()
    timings: dict[str, float] = {}
    notify = on_stage or (lambda stage: None)

    notify("load")
    started = time.monotonic()
    with input_folder(input_path) as folder:
        ct = read_ct_series(folder, options.series_uid)
    timings["load"] = time.monotonic() - started
    logger.info("series %s: %d slices loaded", ct.series_instance_uid, ct.slice_count)

    prediction = predictor.predict(ct.image, on_stage=notify)
    timings.update(prediction.timings_s)

    notify("write")
    started = time.monotonic()
    metadata = predictor.info
    algorithm = AlgorithmInfo(
        name=metadata.name, version=f"{metadata.code_version} weights {predictor.weights_sha256[:12]}"
    )
    outputs = _write_outputs(ct, prediction.mask, algorithm, options, output)
    result = _result_summary(ct, prediction, predictor)
    warnings = [w.to_dict() for w in ct.warnings]
    if result["empty"]:
        warnings.append({"code": "result.empty", "message": "no tumour was predicted", "sop_instance_uid": None})
    report: dict[str, Any] = {
        "sats_version": __version__,
        "intended_use": metadata.intended_use,
        "input": _input_summary(ct),
        "warnings": warnings,
        "model": {
            "name": metadata.name,
            "weights_sha256": predictor.weights_sha256,
            "symmetrization": metadata.symmetrization,
            "threshold": metadata.threshold,
            "step_fraction": predictor.step_fraction,
            "mirror": predictor.mirror,
        },
        "mid_sagittal_plane": {
            "normal_lps": [round(float(v), 6) for v in prediction.symmetric.plane.normal],
            "offset_mm": round(prediction.symmetric.plane.offset_mm, 3),
            "registration_metric": round(prediction.symmetric.metric, 6),
        },
        "result": result,
        "outputs": outputs,
    }
    timings["write"] = time.monotonic() - started
    timings["total"] = time.monotonic() - started_job
    report["timings_s"] = {stage: round(seconds, 3) for stage, seconds in timings.items()}
    (output / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    logger.info(
        "series %s segmented: %.2f cc, %s, %.1f s",
        ct.series_instance_uid,
        result["gtv_volume_cc"],
        result["laterality"],
        timings["total"],
    )
    return report

"""Compare the mid-sagittal planes found by SATs with those of the independent mspdetect package.

Usage::

    python bench/msp_compare.py [--openkbp-cases N] [--output docs/msp_compare.json]

The script reads the real CTs in ../shared/data: the pyCERR head-and-neck CT and the
first N OpenKBP validation CTs. It finds the plane with the SATs ``self`` and ``atlas``
modes and with ``mspdetect.detect_msp``. It prints one line per case and a final JSON
line with the angle differences (degrees) and the offset differences (mm, measured along
the normal through the body centroid).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import mspdetect
import numpy as np
import SimpleITK as sitk
from real_cts import read_cases  # bench/ is on sys.path when a script in it runs

from model.symmetry import MidSagittalPlane, _body_centroid, symmetrize
from worker.cli_model import default_atlas


def mspdetect_plane(ct: sitk.Image) -> tuple[MidSagittalPlane, float]:
    """Run mspdetect on ``ct`` and return its plane in LPS with the runtime in seconds."""
    # mspdetect needed 19 GB for the whole 511 x 511 x 90 pyCERR CT, so it gets the CT
    # resampled to 2 mm in-plane and the middle half of the slices.
    spacing = ct.GetSpacing()
    size = ct.GetSize()
    new_spacing = (max(2.0, spacing[0]), max(2.0, spacing[1]), spacing[2])
    new_size = [int(round(n * s / t)) for n, s, t in zip(size, spacing, new_spacing, strict=True)]
    small = sitk.Resample(
        ct,
        new_size,
        sitk.Transform(),
        sitk.sitkLinear,
        ct.GetOrigin(),
        new_spacing,
        ct.GetDirection(),
        -1024.0,
        sitk.sitkInt16,
    )
    slab = (size[2] // 4, size[2] - size[2] // 4)
    with tempfile.TemporaryDirectory() as folder:
        sitk.WriteImage(small, str(Path(folder) / "CT.nii.gz"))
        case = mspdetect.load_case(folder)
        started = time.monotonic()
        config = mspdetect.DetectionConfig(crop=mspdetect.CropConfig(reference=None, slice_range=slab))
        result = mspdetect.detect_msp(case, config)
        elapsed = time.monotonic() - started
    # mspdetect works in RAS; LPS flips x and y. n . p is unchanged when both flip.
    normal = np.array([-result.plane.normal[0], -result.plane.normal[1], result.plane.normal[2]])
    offset = float(result.plane.offset)
    if normal[0] < 0:
        normal, offset = -normal, -offset
    return MidSagittalPlane(normal, offset), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--openkbp-cases", type=int, default=10, help="OpenKBP validation CTs to include (default 10)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON result to this file")
    args = parser.parse_args()

    atlas = sitk.ReadImage(str(default_atlas()), sitk.sitkFloat32)
    rows = []
    for name, ct in read_cases(args.openkbp_cases):
        reference, reference_time = mspdetect_plane(ct)
        centre = _body_centroid(ct)
        row: dict[str, object] = {"case": name, "mspdetect_s": round(reference_time, 2)}
        for mode in ("self", "atlas"):
            started = time.monotonic()
            try:
                plane = symmetrize(ct, (4.0, 4.0, 4.0), mode=mode, atlas=atlas).plane
            except Exception as error:  # report every failure in the table, then go on
                row[f"{mode}_error"] = str(error)
                continue
            row[f"{mode}_s"] = round(time.monotonic() - started, 2)
            row[f"{mode}_angle_deg"] = round(reference.angle_to(plane), 2)
            row[f"{mode}_offset_mm"] = round(reference.distance_at(centre, plane), 2)
        print(json.dumps(row))
        rows.append(row)

    summary: dict[str, object] = {"cases": len(rows)}
    for mode in ("self", "atlas"):
        angles = [r[f"{mode}_angle_deg"] for r in rows if f"{mode}_angle_deg" in r]
        offsets = [r[f"{mode}_offset_mm"] for r in rows if f"{mode}_offset_mm" in r]
        summary[mode] = {
            "n": len(angles),
            "failed": len(rows) - len(angles),
            "angle_deg_median": float(np.median(angles)) if angles else None,
            "angle_deg_max": float(np.max(angles)) if angles else None,
            "offset_mm_median": float(np.median(offsets)) if offsets else None,
            "offset_mm_max": float(np.max(offsets)) if offsets else None,
        }
    result = {"rows": rows, "summary": summary}
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""Time and repeatability of the atlas registration on real CTs.

Usage::

    python bench/atlas_registration.py [--openkbp-cases N] [--transform similarity|affine]

The script reads the pyCERR head-and-neck CT and the first N OpenKBP validation CTs in
../shared/data. It registers each CT to the shipped atlas. It then registers two copies of
the CT, each turned and shifted by a known rigid motion: yaw 8 degrees, roll 4 degrees and
12 mm, and yaw -6 degrees, roll -3 degrees and -8 mm. The plane found on a moved copy should be the first
plane moved with it; the angle and the offset between the two measure how well the
registration repeats under a change of head pose, which is what symmetrization must undo.
Offsets are measured along the found plane's normal through the centre of the CT grid.

It prints one line per case and a final JSON line with the median registration time and
the mean and largest angle (degrees) and offset (mm) errors. Run it before and after any
change to the registration, on the same machine, and compare.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import SimpleITK as sitk
from real_cts import read_cases  # bench/ is on sys.path when a script in it runs

from model.geometry import corner_points
from model.symmetry import MidSagittalPlane, _plane_from_frame, register_to_atlas
from model.synthetic import turn_and_shift
from worker.cli_model import default_atlas

POSES = ((8.0, 4.0, 12.0), (-6.0, -3.0, -8.0))  # yaw (deg), roll (deg), shift along x (mm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--openkbp-cases", type=int, default=11, help="OpenKBP validation CTs to add (default 11)")
    parser.add_argument("--transform", choices=("similarity", "affine"), default="similarity")
    args = parser.parse_args()
    atlas = sitk.ReadImage(str(default_atlas()), sitk.sitkFloat32)

    def plane_of(ct: sitk.Image) -> tuple[MidSagittalPlane, float]:
        started = time.perf_counter()
        transform, _ = register_to_atlas(ct, atlas, args.transform)
        return _plane_from_frame(transform), time.perf_counter() - started

    times, angles, offsets = [], [], []
    for name, ct in read_cases(args.openkbp_cases):
        plane, seconds = plane_of(ct)
        times.append(seconds)
        errors = []
        for yaw, roll, shift in POSES:
            moved, motion = turn_and_shift(ct, yaw, roll, shift)
            found, _ = plane_of(moved)
            truth = plane.pulled_back(motion)
            centre = np.mean(corner_points(moved), axis=0)
            errors.append((found.angle_to(truth), found.distance_at(centre, truth)))
        angles += [angle for angle, _ in errors]
        offsets += [offset for _, offset in errors]
        described = ", ".join(f"{angle:.1f} deg / {offset:.1f} mm" for angle, offset in errors)
        print(f"{name}: {seconds:.2f} s; moved copies off by {described}", flush=True)
    print(
        json.dumps(
            {
                "cases": len(times),
                "transform": args.transform,
                "median_s": round(float(np.median(times)), 3),
                "angle_mean_deg": round(float(np.mean(angles)), 2),
                "angle_max_deg": round(float(np.max(angles)), 2),
                "offset_mean_mm": round(float(np.mean(offsets)), 2),
                "offset_max_mm": round(float(np.max(offsets)), 2),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Peak memory and time of ``sats segment`` on a large synthetic CT series.

Writes a 512 x 512 x N head-and-neck phantom series (no patient data), then runs
``sats segment`` on it in a child process and reports the child's peak resident memory
from ``os.wait4``. The last output line is one JSON object.

Usage: python bench/large_series.py [--slices 400] [--work /tmp/sats-large]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from worker.synthetic_dicom import HeadNeck, SeriesGeometry, render_phantom, write_ct_series


def write_series(folder: Path, slices: int) -> None:
    """Write the phantom series (about 2.5 GB of memory while rendering)."""
    geometry = SeriesGeometry.axial(
        "HFS",
        rows=512,
        columns=512,
        slices=slices,
        pixel_spacing_mm=(0.9766, 0.9766),
        slice_spacing_mm=1.0,
        centre_lps_mm=(0.0, 20.0, -150.0),
    )
    anatomy = [HeadNeck(centre_lps_mm=(4.0, 20.0, -150.0), yaw_deg=5.0, lesion_side="left")]
    volume = render_phantom(geometry, anatomy, noise_sd_hu=10.0)
    write_ct_series(volume, geometry, folder, overwrite=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=400, help="number of 512 x 512 slices (default 400)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sats-large"), help="scratch folder")
    parser.add_argument("--write-only", action="store_true", help="only write the series (used internally)")
    args = parser.parse_args()

    series = args.work / "ct"
    if args.write_only:
        write_series(series, args.slices)
        return 0
    # The series is written by a child process, so that the segmenting child is forked
    # from a small parent: a forked child starts with the parent's resident pages.
    started = time.monotonic()
    write_command = [sys.executable, __file__, "--write-only", "--slices", str(args.slices), "--work", str(args.work)]
    subprocess.run(write_command, check=True)
    write_s = time.monotonic() - started

    started = time.monotonic()
    command = [sys.executable, "-m", "worker.cli", "--log-level", "WARNING"]
    command += ["segment", str(series), "-o", str(args.work / "out")]
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)  # resource usage of this child alone
    wall_s = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"sats segment failed with status {os.waitstatus_to_exitcode(status)}")
    peak_mb = usage.ru_maxrss / 1024  # KiB on Linux
    report = json.loads((args.work / "out" / "report.json").read_text())
    result = {
        "grid": f"512x512x{args.slices}",
        "write_series_s": round(write_s, 1),
        "segment_wall_s": round(wall_s, 1),
        "peak_rss_mb": round(peak_mb),
        "timings_s": report["timings_s"],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

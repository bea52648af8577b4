"""The real CTs the benchmark scripts in this folder read from ../shared/data."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from model.data import discover, load_case

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def read_cases(openkbp_cases: int) -> list[tuple[str, sitk.Image]]:
    """Return (name, CT) pairs: the pyCERR CT and the first ``openkbp_cases`` OpenKBP validation CTs.

    A dataset whose folder is missing is left out, so the caller reports how many cases it read.
    """
    cases = []
    pycerr = SHARED / "hn-ct-pycerr"
    if pycerr.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(pycerr)))
        cases.append(("hn-ct-pycerr", sitk.Cast(reader.Execute(), sitk.sitkFloat32)))
    openkbp = SHARED / "openkbp"
    if openkbp.is_dir():
        for files in discover(openkbp, "openkbp", "validation")[:openkbp_cases]:
            cases.append((f"openkbp/{files.case_id}", load_case(files).ct))
    return cases

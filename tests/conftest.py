"""Shared fixtures: paths to the real data in ../shared/data and small synthetic datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """Return a path under ../shared/data, skipping the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture(scope="session")
def pycerr_ct() -> sitk.Image:
    """The real 90-slice head-and-neck planning CT, read with SimpleITK (HU, float32)."""
    folder = shared_path("hn-ct-pycerr")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.Cast(reader.Execute(), sitk.sitkFloat32)

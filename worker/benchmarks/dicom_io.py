"""DICOM input and output: series loading against SimpleITK, RTSTRUCT writing against rt-utils."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from worker.rtstruct import AlgorithmInfo, RoiSpec, build_rtstruct
from worker.series import read_ct_series


def _alternate(first: Callable[[], Any], second: Callable[[], Any], repeats: int) -> tuple[list[float], list[float]]:
    """Run the two callables alternately ``repeats`` times each (after one warm-up each); return their times."""
    first()
    second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for run, bucket in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            run()
            bucket.append(time.perf_counter() - started)
    return times


def run_load_benchmark(folder: Path, repeats: int = 5) -> dict[str, Any]:
    """Time reading the CT series in ``folder`` into HU: our reader against SimpleITK's ImageSeriesReader."""

    def ours() -> np.ndarray:
        return read_ct_series(folder).hu

    def simpleitk() -> np.ndarray:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        return sitk.GetArrayFromImage(reader.Execute())

    ours_times, sitk_times = _alternate(ours, simpleitk, repeats)
    difference = float(np.abs(ours().astype(np.float64) - simpleitk().astype(np.float64)).max())
    ours_s, sitk_s = statistics.median(ours_times), statistics.median(sitk_times)
    return {
        "series": folder.name,
        "ours_s": round(ours_s, 4),
        "sitk_s": round(sitk_s, 4),
        "speedup_vs_sitk": round(sitk_s / ours_s, 2),
        "max_abs_hu_diff": difference,
    }


def benchmark_mask(hu: np.ndarray) -> np.ndarray:
    """Return a real-size test mask on a CT: soft tissue (-100 to 100 HU) in the central third of each axis.

    It has many contours and holes per slice, more than a GTV, so it is a demanding case.
    """
    mask = np.zeros(hu.shape, dtype=bool)
    box = tuple(slice(size // 3, 2 * size // 3) for size in hu.shape)
    mask[box] = (hu[box] > -100) & (hu[box] < 100)
    return mask


def run_rtstruct_benchmark(folder: Path, repeats: int = 3) -> dict[str, Any]:
    """Time writing an RTSTRUCT of :func:`benchmark_mask` on the series in ``folder``: ours against rt-utils."""
    from rt_utils import RTStructBuilder

    ct = read_ct_series(folder)
    mask = benchmark_mask(np.asarray(ct.hu))
    output = Path(tempfile.mkdtemp(prefix="sats-bench-"))

    def ours() -> None:
        dataset = build_rtstruct(ct.datasets, mask.astype(np.uint8), RoiSpec(), AlgorithmInfo("bench", "1"))
        dataset.save_as(output / "ours.dcm", enforce_file_format=True)

    def rt_utils() -> None:
        builder = RTStructBuilder.create_new(dicom_series_path=str(folder))
        # rt-utils wants (rows, columns, slices) in its own slice order, which it sorts the same way.
        builder.add_roi(mask=np.transpose(mask, (1, 2, 0)), name="GTV")  # (D, H, W) -> (H, W, D)
        builder.save(str(output / "rtutils.dcm"))

    ours_times, rtutils_times = _alternate(ours, rt_utils, repeats)
    ours_s, rtutils_s = statistics.median(ours_times), statistics.median(rtutils_times)
    return {
        "series": folder.name,
        "mask_voxels": int(mask.sum()),
        "slices_with_mask": int(mask.any(axis=(1, 2)).sum()),
        "ours_s": round(ours_s, 3),
        "rtutils_s": round(rtutils_s, 3),
        "speedup_vs_rtutils": round(rtutils_s / ours_s, 2),
    }

"""Evaluate a model on a labelled dataset: per-case CSV, summary.json and a DSC plot.

Predictions are compared with the reference on the CT's own grid, after mapping back
from the symmetric frame, so the numbers are what a user of the service gets.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from model.data import CaseFiles, load_case
from model.errors import SATsError
from model.geometry import spacing_dhw, to_array
from model.metrics import CaseMetrics, evaluate_masks
from model.predict import Predictor

logger = logging.getLogger(__name__)

METRICS = ("dsc", "asd_mm", "hd95_mm")


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return mean, std and counts per metric; NaN (undefined) values are counted, not averaged.

    A case that failed (no prediction) has DSC 0 and undefined distances.
    """
    summary: dict[str, Any] = {"cases": len(rows), "failed": sum(1 for row in rows if row.get("error"))}
    for name in METRICS:
        values = np.array([float(row[name]) for row in rows], dtype=np.float64)
        defined = values[np.isfinite(values)]
        summary[name] = {
            "mean": float(defined.mean()) if defined.size else None,
            "std": float(defined.std()) if defined.size else None,
            "median": float(np.median(defined)) if defined.size else None,
            "n": int(defined.size),
            "undefined": int(values.size - defined.size),
        }
    return summary


def plot_dsc(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Write a bar chart of per-case DSC, sorted, with the mean as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(rows, key=lambda row: row["dsc"])
    values = [row["dsc"] for row in ordered]
    figure, axes = plt.subplots(figsize=(max(6.0, len(values) * 0.22), 3.5))
    axes.bar(range(len(values)), values, color="#3b7dd8")
    axes.axhline(float(np.mean(values)), color="#d83b3b", linestyle="--", label=f"mean {np.mean(values):.3f}")
    axes.set_xticks(range(len(values)), [row["case_id"] for row in ordered], rotation=90, fontsize=7)
    axes.set_ylim(0, 1)
    axes.set_ylabel("DSC")
    axes.set_title(title)
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _row(case_id: str, metrics: CaseMetrics, voxel_cc: float, error: str) -> dict[str, Any]:
    return {
        "case_id": case_id,
        **asdict(metrics),
        "prediction_cc": metrics.prediction_voxels * voxel_cc,
        "reference_cc": metrics.reference_voxels * voxel_cc,
        "error": error,
    }


def evaluate_cases(
    predictor: Predictor,
    cases: Sequence[CaseFiles],
    output_dir: Path,
    save_predictions: bool = False,
    on_case: Callable[[str, CaseMetrics], None] | None = None,
) -> dict[str, Any]:
    """Predict every case, write ``cases.csv``, ``summary.json`` and ``dsc.png``; return the summary.

    A case whose prediction raises a :class:`SATsError` (for example a failed
    symmetrization) is recorded with its error and scores DSC 0.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for files in cases:
        case = load_case(files)
        reference = to_array(case.mask, np.uint8) > 0
        spacing = spacing_dhw(case.ct)
        voxel_cc = float(np.prod(spacing)) / 1000.0
        try:
            prediction = predictor.predict(case.ct)
        except SATsError as error:
            # The user gets no contour for this case, so it scores as a miss.
            logger.warning("case %s failed: %s [%s]", files.case_id, error, error.code)
            metrics = CaseMetrics(0.0, math.nan, math.nan, 0, int(reference.sum()))
            rows.append(_row(files.case_id, metrics, voxel_cc, f"{error.code}: {error}"))
            continue
        metrics = evaluate_masks(prediction.mask > 0, reference, spacing)
        rows.append(_row(files.case_id, metrics, voxel_cc, ""))
        if save_predictions:
            image = sitk.GetImageFromArray(prediction.mask)
            image.CopyInformation(case.ct)
            sitk.WriteImage(image, str(output_dir / f"{files.case_id}.nii.gz"), True)
        if on_case is not None:
            on_case(files.case_id, metrics)
        logger.info(
            "case %s: DSC %.3f, ASD %.2f mm, HD95 %.2f mm", files.case_id, metrics.dsc, metrics.asd_mm, metrics.hd95_mm
        )

    with (output_dir / "cases.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows)
    summary["model"] = {"name": predictor.info.name, "weights_sha256": predictor.weights_sha256}
    summary["definitions"] = (
        "DSC = 2|A and B|/(|A|+|B|). Surfaces: mask minus 6-connected erosion. ASD: mean of both "
        "directed surface distances pooled (MONAI symmetric). HD95: max of the two directed 95th "
        "percentiles (MONAI). Both masks empty: DSC 1, distances 0; one empty: DSC 0, distances undefined."
    )
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    plot_dsc(rows, output_dir / "dsc.png", f"{predictor.info.name}: DSC per case (n={len(rows)})")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """Return a one-line-per-metric text summary for the terminal."""
    lines = [f"cases: {summary['cases']} (failed: {summary['failed']})"]
    for name in METRICS:
        entry = summary[name]
        if entry["mean"] is None:
            lines.append(f"{name}: undefined for all cases")
            continue
        undefined = f", undefined in {entry['undefined']}" if entry["undefined"] else ""
        lines.append(f"{name}: mean {entry['mean']:.4f} std {entry['std']:.4f} (n={entry['n']}{undefined})")
    return "\n".join(lines)

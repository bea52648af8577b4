"""Find which structures of an OpenKBP label map a model's false-positive voxels fall in.

Usage::

    python bench/false_positive_labels.py EVAL_DIR SPLIT_DIR [--target 10] [--exclude 8,9]

EVAL_DIR is an output folder of ``sats evaluate --save-predictions`` (one ``CASE.nii.gz``
mask per case on the CT grid). SPLIT_DIR is the matching OpenKBP split folder, whose
``CASE/structures.nii.gz`` label map gives the reference (label ``--target``) and the
other structures. A false-positive voxel is predicted but not in the target.

Prints, pooled over all cases, the share of false-positive voxels in each label of the
label map (0 = no structure), and the mean DSC the predictions would have if they left out
the voxels of the ``--exclude`` labels. That DSC is an upper bound on what avoiding those
structures would gain, not a result of any model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def read_label_names(case_dir: Path) -> dict[int, str]:
    """Return {label value: name} from ``structures.txt`` (lines ``VALUE NAME``)."""
    names = {0: "none"}
    for line in (case_dir / "structures.txt").read_text().splitlines():
        value, _, name = line.strip().partition(" ")
        if value:
            names[int(value)] = name
    return names


def main(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("split_dir", type=Path)
    parser.add_argument("--target", type=int, default=10, help="label value of the target (default 10 = PTV70)")
    parser.add_argument("--exclude", default="8,9", help="comma-separated label values left out for the bound")
    options = parser.parse_args(arguments)
    exclude = [int(value) for value in options.exclude.split(",") if value]

    predictions = sorted(options.eval_dir.glob("*.nii.gz"))
    if not predictions:
        parser.error(f"no predicted masks (*.nii.gz) in {options.eval_dir}; run sats evaluate --save-predictions")

    false_positives: Counter[int] = Counter()
    names: dict[int, str] = {}
    dsc, dsc_without_excluded = [], []
    for path in predictions:
        case = path.name.removesuffix(".nii.gz")
        case_dir = options.split_dir / case
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "structures.nii.gz")))
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0
        if predicted.shape != labels.shape:
            raise SystemExit(f"{case}: prediction shape {predicted.shape} differs from the label map's {labels.shape}")
        names.update(read_label_names(case_dir))

        reference = labels == options.target
        false_positive = predicted & ~reference
        values, counts = np.unique(labels[false_positive], return_counts=True)
        false_positives.update({int(v): int(c) for v, c in zip(values, counts, strict=True)})

        overlap = int((predicted & reference).sum())
        excluded = int((false_positive & np.isin(labels, exclude)).sum())
        dsc.append(2 * overlap / max(1, int(predicted.sum()) + int(reference.sum())))
        dsc_without_excluded.append(2 * overlap / max(1, int(predicted.sum()) - excluded + int(reference.sum())))

    total = sum(false_positives.values())
    print(f"{len(predictions)} cases, {total} false-positive voxels")
    print("| label | structure | share of false-positive voxels |")
    print("|---|---|---|")
    for value, count in false_positives.most_common():
        print(f"| {value} | {names.get(value, '?')} | {count / max(1, total):.3f} |")
    print(f"mean DSC: {statistics.mean(dsc):.3f}")
    print(f"mean DSC without the predicted voxels of labels {exclude}: {statistics.mean(dsc_without_excluded):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Validation DSC of a model under mirror test-time augmentation and other thresholds.

Usage::

    python bench/postprocess_sweep.py [--model WEIGHTS] [--split validation] [--threads 2]
        [--thresholds 0.3,0.4,0.5,0.6] [--max-cases N]

For every case of ../shared/data/openkbp in the split, the script symmetrizes the CT once
and runs the sliding window twice: on the volume and on its left-right mirror image. The
mirror prediction, flipped back, averaged with the plain one is what ``--mirror-tta``
computes window by window (both are linear in the window outputs and the window layout
is symmetric). Each probability map is mapped to the CT grid as the service does and
thresholded at every threshold. The DSC against the PTV70 mask is computed on that grid.

It prints one line per case and a final JSON line with the mean and median DSC per
setting. The shipped model was selected on this same validation split, so a gain
measured here is optimistic. Prefer settings whose gain holds for most cases.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from model.data import discover, load_case
from model.geometry import LR_AXIS, to_array
from model.inference import sliding_window_probabilities
from model.metrics import dice_coefficient
from model.predict import Predictor, tumour_mask_on_ct
from worker.cli_model import default_atlas, default_model

OPENKBP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "openkbp"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=default_model(),
        help="model weights (.safetensors with .json beside it; default: the shipped model)",
    )
    parser.add_argument("--split", default="validation", help="OpenKBP split (default validation)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--thresholds", default="0.3,0.4,0.5,0.6", help="comma-separated probability thresholds")
    parser.add_argument("--max-cases", type=int, default=None, help="evaluate only the first N cases")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        thresholds = [float(value) for value in args.thresholds.split(",")]
    except ValueError:
        parser.error(f"--thresholds must be comma-separated numbers, got {args.thresholds!r}")
    if not all(0.0 < threshold < 1.0 for threshold in thresholds):
        parser.error(f"--thresholds must lie between 0 and 1, got {args.thresholds!r}")

    predictor = Predictor(args.model, atlas=default_atlas())
    patch = predictor.metadata.patch_size
    cases = discover(OPENKBP, "openkbp", args.split)[: args.max_cases]
    scores: dict[str, list[float]] = {}
    for files in cases:
        case = load_case(files)
        reference = to_array(case.mask, np.uint8) > 0
        symmetric = predictor.symmetrize(case.ct)
        volume = to_array(symmetric.image)
        box, normalized = predictor.preprocess(volume)
        plain = sliding_window_probabilities(predictor.network, normalized, patch)
        mirrored = np.flip(
            sliding_window_probabilities(predictor.network, np.ascontiguousarray(np.flip(normalized, LR_AXIS)), patch),
            LR_AXIS,
        )
        line = [files.case_id]
        for name, probabilities in (("plain", plain), ("mirror", (plain + mirrored) / 2)):
            full = np.zeros(volume.shape, dtype=np.float32)
            full[box.slices] = probabilities
            for threshold in thresholds:
                mask = tumour_mask_on_ct(full, symmetric, case.ct, threshold) > 0
                key = f"{name}@{threshold:g}"
                scores.setdefault(key, []).append(dice_coefficient(mask, reference))
                line.append(f"{key} {scores[key][-1]:.3f}")
        print("  ".join(line), flush=True)

    summary = {
        key: {"mean": float(np.mean(values)), "median": float(np.median(values))} for key, values in scores.items()
    }
    print(json.dumps({"cases": len(cases), "model": str(args.model), "dsc": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Score the auxiliary output of a training run and compare it with the tumour output.

Usage::

    python bench/auxiliary_overlap.py RUN_DIR DATA_ROOT [--split validation] [--threads 2]

RUN_DIR is the ``sats train`` folder of a run with ``--auxiliary-labels``. Its
``state.pt`` contains the last finished epoch's network with the auxiliary output. Its
``config.json`` gives the layout, labels, spacing, patch and atlas. Every case of the split is
prepared as in training (symmetric frame, cache in ``RUN_DIR/../cache`` unless
``--cache-dir``) and predicted by both outputs with the sliding window, threshold 0.5.

Prints, over the cases that contain the auxiliary structure, the mean and median DSC of
the auxiliary output against it. Then, of the tumour output's false-positive voxels that
lie in the auxiliary structure, the median share per case that the auxiliary output
predicts as well. A high share means that both outputs claim the same voxels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from model.checkpoint import sha256_file
from model.data import discover, prepare_cached
from model.inference import sliding_window_probabilities
from model.metrics import dice_coefficient
from model.network import NetworkConfig, SATsNetwork
from model.preprocess import IntensityNormalization


class AuxiliaryOutput(nn.Module):
    """The encoder-decoder followed by the auxiliary 1x1x1 convolution, for the sliding window."""

    def __init__(self, model: SATsNetwork) -> None:
        super().__init__()
        if model.auxiliary is None:
            raise ValueError("the network has no auxiliary output")
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        auxiliary = self.model.segment(x).auxiliary_logits
        assert auxiliary is not None
        return auxiliary


def main(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--split", default="validation", help="dataset split (default validation)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="prepared-case cache (default RUN_DIR/../cache)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    options = parser.parse_args(arguments)
    torch.set_num_threads(options.threads)

    config = json.loads((options.run_dir / "config.json").read_text())
    auxiliary_labels = tuple(config.get("auxiliary_labels") or ())
    if not auxiliary_labels:
        parser.error(f"{options.run_dir} was trained without --auxiliary-labels")
    state = torch.load(options.run_dir / "state.pt", map_location="cpu", weights_only=True)
    model = SATsNetwork(NetworkConfig.from_dict(config["network"]), config["embedding"], auxiliary_output=True)
    model.load_state_dict(state["model"])
    model.eval()
    normalization = IntensityNormalization(**state["normalization"])

    atlas_path = Path(config["atlas_path"]) if config["atlas_path"] else None
    atlas = sitk.ReadImage(str(atlas_path), sitk.sitkFloat32) if atlas_path else None
    atlas_sha256 = sha256_file(atlas_path) if atlas_path else None
    cache_dir = options.cache_dir or options.run_dir.parent / "cache"
    cases = discover(
        options.data_root, config["layout"], options.split, config["label_value"], auxiliary_values=auxiliary_labels
    )

    def predict(network: nn.Module, image: np.ndarray) -> np.ndarray:
        return sliding_window_probabilities(
            network, image, tuple(config["patch_size"]), device=torch.device("cpu"), mixed_precision=True
        )

    auxiliary_dsc, shared = [], []
    for files in cases:
        case = prepare_cached(
            files, cache_dir, tuple(config["spacing_dhw_mm"]), config["symmetrization"], atlas, atlas_sha256
        )
        assert case.auxiliary is not None
        if not case.auxiliary.any():
            continue
        image = normalization.apply(case.image_hu)
        tumour = predict(model.unet, image) >= 0.5
        auxiliary = predict(AuxiliaryOutput(model), image) >= 0.5
        auxiliary_dsc.append(dice_coefficient(auxiliary, case.auxiliary > 0))
        inside = tumour & (case.mask == 0) & (case.auxiliary > 0)
        if inside.any():
            shared.append(float((auxiliary & inside).sum() / inside.sum()))

    print(f"run {options.run_dir}, epoch {state['epoch']}, auxiliary labels {list(auxiliary_labels)}")
    print(
        f"auxiliary output DSC over {len(auxiliary_dsc)} cases: mean {statistics.mean(auxiliary_dsc):.3f}, "
        f"median {statistics.median(auxiliary_dsc):.3f}"
    )
    print(
        "tumour false positives inside the auxiliary structure that the auxiliary output also predicts: "
        f"median {statistics.median(shared):.3f} over {len(shared)} cases"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

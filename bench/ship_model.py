"""Copy a trained model into model/weights/ with its evaluation results in the metadata.

Usage::

    python bench/ship_model.py RUN/best.safetensors EVAL_DIR NAME "TRAINING DATA DESCRIPTION"

The weights file is copied unchanged, so its SHA-256 stays valid. The metadata JSON gets
the name, the summary of ``sats evaluate`` (EVAL_DIR/summary.json) under
``metrics.evaluation``, the description under ``training_data`` and, for models trained
before the metadata recorded it, ``training.target`` derived from the layout settings.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from model.checkpoint import load_model
from model.data import target_definition

WEIGHTS = Path(__file__).resolve().parents[1] / "model" / "weights"


def main(arguments: list[str]) -> int:
    if len(arguments) != 4:
        print(__doc__)
        return 2
    source, evaluation, name, description = Path(arguments[0]), Path(arguments[1]), arguments[2], arguments[3]
    load_model(source)  # verifies the checksum and the architecture before shipping
    metadata = json.loads(source.with_suffix(".json").read_text())
    summary = json.loads((evaluation / "summary.json").read_text())
    metadata["name"] = name
    metadata["training_data"] = description
    metadata["metrics"] = {**metadata.get("metrics", {}), "evaluation": summary}
    # Models trained before the metadata named the resolved target get it from their settings.
    training = metadata["training"]
    if "target" not in training:
        training["target"] = target_definition(training["layout"], training["label_value"], training["structures"])
    # Paths on the machine that trained the model are of no use to a user.
    for key in ("data_root", "output_dir", "cache_dir", "atlas_path"):
        metadata["training"].pop(key, None)
    target = WEIGHTS / f"{name}.safetensors"
    shutil.copyfile(source, target)
    target.with_suffix(".json").write_text(json.dumps(metadata, indent=2) + "\n")
    load_model(target)
    print(f"wrote {target} and {target.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Training speed of the full-size SATs network on one CUDA GPU, to size the published schedule.

Runs ``model.train.Trainer``, the code behind ``sats train``, on synthetic phantom CTs
(``model.synthetic``, no patient data). The settings are the published ones: the default
``NetworkConfig`` with strides planned for 3 x 0.8 x 0.8 mm (30.9 M parameters), patches of
56 x 192 x 192 voxels and batch 2. It trains with fp16 autocast and loss scaling, and in
stage 2 with the Siamese forward, the projection head and the margin loss. Each stage
runs two short epochs. The first is a warm-up (cuDNN algorithm search, allocator growth)
and is not counted.

Every training step is timed from one call of the trainer's step callback to the next.
A step therefore includes patch sampling and augmentation on the CPU as well as the GPU
work, as in a real run. The first step of each epoch is left out because the time
before it also covers the end of the previous epoch (checkpoint writing).

The published schedule is 800 epochs of stage 1 and 200 of stage 2, 250 steps each. The
script multiplies the measured median step times by those step counts to estimate the
wall time of a full run. Validation is left out of that estimate (it runs on whole volumes
every ``--validate-every`` epochs and depends on the validation set).

Needs the repository's dependencies (torch, numpy, SimpleITK). Prints a table and, as the
last line, one JSON object. Exit status 1 when no CUDA device is available.

Usage::

    python bench/gpu_training.py             # one CUDA GPU, an estimated 3 to 6 minutes
    python bench/gpu_training.py --dry-run   # a tiny network and patch on the CPU in fp32, checks the code paths

Expected step times on one NVIDIA H200. This is an ESTIMATE, NOT MEASURED: a forward
pass of one 56 x 192 x 192 window costs 1.80 TFLOP (``bench/gpu_inference.py``), and a
training step about three times its forward pass, so a stage-1 step of batch 2 is about
11 TFLOP and a stage-2 step (both branches) about 22 TFLOP. At the 180 to 300 TFLOP/s that
the inference script expects in eager bf16/fp16, that is about 40 to 60 ms (stage 1) and 70
to 120 ms (stage 2) of GPU work. The CPU side (sampling, augmentation) may then set the
pace, which is one of the things this script finds out. 250,000 steps at 0.1 to 0.3 s per
step would take 7 to 21 hours.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from model.network import NetworkConfig, plan_strides  # noqa: E402
from model.synthetic import make_phantom  # noqa: E402
from model.train import TrainConfig, Trainer  # noqa: E402

#: The published schedule: epochs of each stage and steps per epoch.
PUBLISHED_EPOCHS = {1: 800, 2: 200}
PUBLISHED_STEPS_PER_EPOCH = 250

#: Network input spacing (D, H, W) in mm and the published patch.
SPACING_MM = (3.0, 0.8, 0.8)
PATCH = (56, 192, 192)

#: Phantom grid (x, y, z) and spacing (x, y, z) in mm. 300 x 300 x 100 voxels at
#: 0.8 x 0.8 x 3 mm cover 240 x 240 x 300 mm, which holds whole 56 x 192 x 192 patches.
PHANTOM_SIZE_XYZ = (300, 300, 100)
PHANTOM_SPACING_XYZ_MM = (0.8, 0.8, 3.0)

#: Dry run: a tiny network at a coarse spacing on the CPU.
DRY_SPACING_MM = (4.0, 4.0, 4.0)
DRY_PATCH = (16, 32, 32)
DRY_PHANTOM_SIZE_XYZ = (48, 48, 24)
DRY_PHANTOM_SPACING_XYZ_MM = (4.0, 4.0, 4.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--iterations", type=int, default=None, help="training steps per epoch (default 40, or 3 with --dry-run)"
    )
    parser.add_argument("--cases", type=int, default=4, help="phantom CTs, one of them for validation (default 4)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own)")
    parser.add_argument("--dry-run", action="store_true", help="tiny network and patch on the CPU in fp32")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="new or empty folder for the phantoms and the run, kept afterwards (default: a temporary one)",
    )
    args = parser.parse_args(argv)
    if args.iterations is None:
        args.iterations = 3 if args.dry_run else 40
    if args.iterations < 2:
        parser.error(f"--iterations must be at least 2 to time a step, got {args.iterations}")
    if args.work_dir is not None and args.work_dir.exists() and any(args.work_dir.iterdir()):
        # A run left there would be resumed instead of timed.
        parser.error(f"--work-dir {args.work_dir} is not empty; name a new or empty folder")
    if args.cases < 2:
        parser.error(f"--cases must be at least 2 (one trains, one validates), got {args.cases}")
    return args


def write_phantoms(root: Path, cases: int, dry_run: bool) -> None:
    """Write ``cases`` phantoms in the nnU-Net raw layout, lesions on alternating sides."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    size = DRY_PHANTOM_SIZE_XYZ if dry_run else PHANTOM_SIZE_XYZ
    spacing = DRY_PHANTOM_SPACING_XYZ_MM if dry_run else PHANTOM_SPACING_XYZ_MM
    for index in range(cases):
        phantom = make_phantom(
            size_xyz=size,
            spacing_xyz_mm=spacing,
            yaw_degrees=2.0 * index,
            lesion_side="left" if index % 2 else "right",
            seed=index,
        )
        sitk.WriteImage(phantom.ct, str(root / "imagesTr" / f"phantom{index}_0000.nii.gz"))
        sitk.WriteImage(phantom.lesion, str(root / "labelsTr" / f"phantom{index}.nii.gz"))


def training_config(root: Path, args: argparse.Namespace, device: str) -> TrainConfig:
    spacing = DRY_SPACING_MM if args.dry_run else SPACING_MM
    if args.dry_run:
        network = NetworkConfig(
            base_features=4, max_features=8, strides=plan_strides(spacing), encoder_blocks=(1, 1, 1, 1, 1)
        )
    else:
        network = NetworkConfig(strides=plan_strides(spacing))
    return TrainConfig(
        data_root=root / "data",
        output_dir=root / "run",
        cache_dir=root / "cache",
        layout="nnunet",
        train_split="Tr",
        validation_fraction=1 / args.cases,
        spacing_dhw_mm=spacing,
        patch_size=DRY_PATCH if args.dry_run else PATCH,
        batch_size=2,
        network=network,
        # Self-symmetrization needs no atlas file, and the frame does not change the step time.
        symmetrization="self",
        stage1_epochs=2,
        stage2_epochs=2,
        iterations_per_epoch=args.iterations,
        stage2_backbone_learning_rate=1e-5,
        embedding="head",
        validate_every=1000,  # validate only after each stage's last epoch
        # The dry run trains in fp32. Its deepest decoder level is 2 voxels deep with 16
        # channels, a shape whose convolution gradients torch 2.13.0 gets wrong in bf16
        # autocast on the CPU (model/autocast_check.py), so the trainer rejects bf16 for it.
        mixed_precision=not args.dry_run,
        device=device,
        model_name="gpu-training-benchmark",
    )


class StepClock:
    """Step callback that keeps the time of every training step, by (stage, epoch)."""

    def __init__(self) -> None:
        self.times: dict[tuple[int, int], list[float]] = {}

    def __call__(self, stage: int, epoch: int, step: int, loss: float) -> None:
        self.times.setdefault((stage, epoch), []).append(time.perf_counter())

    def step_seconds(self, stage: int) -> list[float]:
        """Return the step durations of ``stage`` after its first epoch, first step of each epoch left out."""
        durations = []
        for (row_stage, epoch), stamps in sorted(self.times.items()):
            if row_stage == stage and epoch > 0:
                durations += [later - earlier for earlier, later in itertools.pairwise(stamps)]
        return durations


def summarise(clock: StepClock, trainer: Trainer, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    stages = {}
    for stage in (1, 2):
        seconds = clock.step_seconds(stage)
        median = statistics.median(seconds)
        steps = PUBLISHED_EPOCHS[stage] * PUBLISHED_STEPS_PER_EPOCH
        stages[f"stage{stage}"] = {
            "steps_timed": len(seconds),
            "median_s": median,
            "mean_s": statistics.fmean(seconds),
            "max_s": max(seconds),
            "published_steps": steps,
            "published_hours": median * steps / 3600,
        }
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dry_run": args.dry_run,
        "parameters": sum(p.numel() for p in trainer.model.unet.parameters()),
        "patch": list(trainer.config.patch_size),
        "batch": trainer.config.batch_size,
        "iterations_per_epoch": args.iterations,
        **stages,
        "published_schedule_hours": sum(row["published_hours"] for row in stages.values()),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def print_table(result: dict[str, Any]) -> None:
    print(f"device {result['device']}, torch {result['torch']}, {result['parameters']:,} parameters")
    print(f"patch {result['patch']}, batch {result['batch']}")
    print("| stage | steps timed | median s/step | mean s/step | max s/step | published steps | hours |")
    print("|---|---|---|---|---|---|---|")
    for stage in (1, 2):
        row = result[f"stage{stage}"]
        print(
            f"| {stage} | {row['steps_timed']} | {row['median_s']:.3f} | {row['mean_s']:.3f} | {row['max_s']:.3f} "
            f"| {row['published_steps']} | {row['published_hours']:.1f} |"
        )
    print(f"published schedule without validation: {result['published_schedule_hours']:.1f} hours")
    if "peak_memory_gib" in result:
        print(f"peak GPU memory allocated: {result['peak_memory_gib']:.1f} GiB")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("no CUDA device is available; use --dry-run to check the script on the CPU", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="sats-gpu-training-") as scratch:
        root = args.work_dir if args.work_dir is not None else Path(scratch)
        write_phantoms(root / "data", args.cases, args.dry_run)
        clock = StepClock()
        trainer = Trainer(training_config(root, args, device.type), on_step=clock)
        trainer.run(stages=(1, 2))
        result = summarise(clock, trainer, device, args)
    print_table(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

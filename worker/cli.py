"""The ``sats`` command line: training, evaluation, prediction and the atlas.

Run ``sats COMMAND --help`` for the options of each command.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.errors import InputError, SATsError
from worker import cli_bench, cli_dicom, cli_model, cli_service

logger = logging.getLogger("sats")


def _triple(kind: type) -> object:
    def parse(text: str) -> tuple[object, object, object]:
        parts = text.replace("x", ",").split(",")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"expected three values like 3,4,4 (D,H,W), got {text!r}")
        try:
            values = tuple(kind(p) for p in parts)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"invalid value in {text!r}: {error}") from error
        return (values[0], values[1], values[2])

    return parse


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the SATs network (two stages)",
        description="Train the residual U-Net (stage 1: Dice + BCE) and then the Siamese stage "
        "with the margin loss (stage 2). Resumes from OUTPUT/state.pt when it exists.",
    )
    data = parser.add_argument_group("data")
    data.add_argument("data_root", type=Path, help="dataset folder")
    data.add_argument(
        "--layout", choices=["nnunet", "segrap", "openkbp"], default="nnunet", help="dataset layout (default: nnunet)"
    )
    data.add_argument(
        "--train-split",
        default=None,
        help="training split: Tr for nnunet, the subfolder for openkbp (default: Tr / train)",
    )
    data.add_argument(
        "--validation-split",
        default=None,
        help="validation split (openkbp: validation); without it the last "
        "--validation-fraction of the training cases are held out",
    )
    data.add_argument(
        "--validation-fraction",
        type=float,
        default=0.2,
        help="fraction of training cases held out when there is no validation split (default 0.2)",
    )
    data.add_argument(
        "--label", type=int, default=None, help="tumour label value (default: 1 for nnunet, 10 = PTV70 for openkbp)"
    )
    data.add_argument(
        "--structures",
        default="GTVp,GTVnd",
        help="SegRap2023 label files to unite, comma-separated (default: GTVp,GTVnd)",
    )
    data.add_argument(
        "--auxiliary-labels",
        type=_int_tuple,
        default=(),
        help="label values, comma-separated, whose union a second training-only output learns beside the "
        "tumour, e.g. 8,9 (PTV56, PTV63) for openkbp; nnunet and openkbp layouts only (default: none)",
    )
    data.add_argument("--max-cases", type=int, default=None, help="use only the first N training cases (for trials)")
    data.add_argument(
        "--cache-dir", type=Path, default=None, help="folder for preprocessed cases (default: OUTPUT/cache)"
    )

    geometry = parser.add_argument_group("geometry and preprocessing")
    geometry.add_argument(
        "--spacing",
        type=_triple(float),
        default=(3.0, 0.8, 0.8),
        help="network voxel spacing D,H,W in mm of the symmetric frame (default 3,0.8,0.8)",
    )
    geometry.add_argument(
        "--patch",
        type=_triple(int),
        default=(56, 192, 192),
        help="patch size D,H,W in voxels (default 56,192,192 as published)",
    )
    geometry.add_argument(
        "--symmetrization",
        choices=["atlas", "self"],
        default="atlas",
        help="symmetrize by registration to the atlas or to the CT's own mirror (default atlas)",
    )
    geometry.add_argument(
        "--atlas", type=Path, default=cli_model.default_atlas(), help="atlas NIfTI (default: the shipped atlas)"
    )

    network = parser.add_argument_group("network")
    network.add_argument("--base-features", type=int, default=32, help="feature maps of the first stage (default 32)")
    network.add_argument("--max-features", type=int, default=320, help="cap on feature maps per stage (default 320)")
    network.add_argument(
        "--encoder-blocks",
        type=_int_tuple,
        default=(1, 1, 1, 2, 2),
        help="residual blocks per encoder stage, 5 values (default 1,1,1,2,2)",
    )
    network.add_argument(
        "--decoder-blocks",
        type=_int_tuple,
        default=(1, 1, 1, 1),
        help="residual blocks per decoder stage, 4 values (default 1,1,1,1)",
    )

    schedule = parser.add_argument_group("schedule and optimiser")
    schedule.add_argument("--stages", choices=["1", "2", "both"], default="both", help="stages to run (default both)")
    schedule.add_argument(
        "--init-from", type=Path, default=None, help="stage-1 model (.safetensors) to start stage 2 from"
    )
    schedule.add_argument("--stage1-epochs", type=int, default=800, help="stage-1 epochs (default 800)")
    schedule.add_argument("--stage2-epochs", type=int, default=200, help="stage-2 epochs (default 200)")
    schedule.add_argument("--iterations", type=int, default=250, help="training steps per epoch (default 250)")
    schedule.add_argument("--batch-size", type=int, default=2, help="patches per step (default 2)")
    schedule.add_argument("--lr", type=float, default=1e-2, help="stage-1 learning rate (default 1e-2)")
    schedule.add_argument(
        "--head-lr", type=float, default=1e-2, help="stage-2 projection-head learning rate (default 1e-2)"
    )
    schedule.add_argument(
        "--stage2-backbone-lr", type=float, default=1e-5, help="stage-2 encoder-decoder learning rate (default 1e-5)"
    )
    schedule.add_argument(
        "--optimizer",
        choices=["sgd", "adamw"],
        default="sgd",
        help="sgd: SGD with Nesterov momentum, as published. adamw: AdamW with betas 0.9, 0.999, which "
        "needs far smaller learning rates than the defaults: set --lr, --stage2-backbone-lr and --head-lr "
        "to about 1e-4 to 1e-3 (default sgd)",
    )
    schedule.add_argument(
        "--momentum", type=float, default=None, help="SGD Nesterov momentum, with --optimizer sgd (default 0.99)"
    )
    schedule.add_argument(
        "--weight-decay",
        type=float,
        default=3e-5,
        help="weight decay: L2 for sgd, decoupled for adamw (default 3e-5, nnU-Net's value for SGD, kept "
        "for adamw so that a change of optimiser changes one thing; torch's own AdamW default is 1e-2)",
    )
    schedule.add_argument("--validate-every", type=int, default=1, help="validate every N epochs (default 1)")

    loss = parser.add_argument_group("asymmetry loss")
    loss.add_argument(
        "--embedding",
        choices=["head", "features", "none"],
        default="head",
        help="stage-2 margin loss on projection-head embeddings (SATs), on normalised decoder "
        "features (no head), or no margin loss (plain network) (default head)",
    )
    loss.add_argument(
        "--margin",
        type=float,
        default=1.0,
        help="margin t between embeddings of asymmetric voxels, in embedding units; unit "
        "embeddings are at most 2 apart (default 1.0; the paper's 20 never saturates)",
    )
    loss.add_argument("--beta", type=float, default=1.0, help="weight of the margin loss (default 1.0)")
    loss.add_argument(
        "--auxiliary-weight",
        type=float,
        default=1.0,
        help="weight of the auxiliary output's Dice + BCE, with --auxiliary-labels. 0 trains no auxiliary "
        "output (default 1.0)",
    )
    loss.add_argument(
        "--auxiliary-negative-weight",
        type=float,
        default=1.0,
        help="factor on the tumour output's cross-entropy at auxiliary voxels outside the tumour, with "
        "--auxiliary-labels. Above 1, tumour predicted there costs more (default 1.0: unchanged)",
    )

    loss.add_argument(
        "--deep-supervision",
        action="store_true",
        help="add training-only tumour outputs to the decoder stages between the deepest and the last, as "
        "nnU-Net does; each coarser output weighs half the one before (default: off; the saved model and "
        "inference are the same either way)",
    )

    run = parser.add_argument_group("run")
    run.add_argument("-o", "--output", type=Path, required=True, help="run folder for checkpoints and logs")
    run.add_argument("--name", default="sats", help="model name written into the metadata (default sats)")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    run.add_argument(
        "--no-mixed-precision",
        action="store_true",
        help="train in fp32 (default: fp16 autocast with loss scaling on CUDA, bf16 on CPUs with AVX512-BF16 or AMX, "
        "after checking the bf16 convolution gradients against fp32)",
    )
    run.add_argument("--seed", type=int, default=12345, help="random seed (default 12345)")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from model.network import NetworkConfig, plan_strides
    from model.train import TrainConfig, Trainer

    if args.momentum is not None and args.optimizer != "sgd":
        raise InputError(
            f"--momentum {args.momentum} applies to --optimizer sgd only, not {args.optimizer}: leave out --momentum"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    default_split = {"nnunet": "Tr", "openkbp": "train", "segrap": ""}[args.layout]
    network = NetworkConfig(
        base_features=args.base_features,
        max_features=args.max_features,
        strides=plan_strides(args.spacing),
        encoder_blocks=args.encoder_blocks,
        decoder_blocks=args.decoder_blocks,
    )
    config = TrainConfig(
        data_root=args.data_root,
        output_dir=args.output,
        cache_dir=args.cache_dir or args.output / "cache",
        layout=args.layout,
        train_split=args.train_split or default_split,
        validation_split=args.validation_split,
        label_value=args.label,
        structures=tuple(args.structures.split(",")),
        validation_fraction=args.validation_fraction,
        max_cases=args.max_cases,
        spacing_dhw_mm=args.spacing,
        patch_size=args.patch,
        batch_size=args.batch_size,
        network=network,
        symmetrization=args.symmetrization,
        atlas_path=args.atlas,
        stage1_epochs=args.stage1_epochs,
        stage2_epochs=args.stage2_epochs,
        iterations_per_epoch=args.iterations,
        learning_rate=args.lr,
        head_learning_rate=args.head_lr,
        stage2_backbone_learning_rate=args.stage2_backbone_lr,
        optimizer=args.optimizer,
        momentum=0.99 if args.momentum is None else args.momentum,
        weight_decay=args.weight_decay,
        embedding=args.embedding,
        margin=args.margin,
        beta=args.beta,
        auxiliary_labels=args.auxiliary_labels,
        auxiliary_weight=args.auxiliary_weight,
        auxiliary_negative_weight=args.auxiliary_negative_weight,
        deep_supervision=args.deep_supervision,
        validate_every=args.validate_every,
        seed=args.seed,
        mixed_precision=not args.no_mixed_precision,
        device=args.device,
        model_name=args.name,
    )
    # The bar starts at the first step, so that an option or data error is not printed
    # below an empty bar that looks like training has begun.
    bar: tqdm[Any] | None = None

    def on_step(stage: int, epoch: int, step: int, loss: float) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=config.iterations_per_epoch, unit="step", dynamic_ncols=True, file=sys.stderr)
        if step == 0:
            bar.reset()
            bar.set_description(f"stage {stage} epoch {epoch + 1}")
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    trainer = Trainer(config, on_step=on_step)
    if args.init_from is not None and not trainer.state_path.is_file():
        trainer.initialise_from(args.init_from)
    stages = {"1": (1,), "2": (2,), "both": (1, 2)}[args.stages]
    summary = trainer.run(stages)
    if bar is not None:
        bar.close()
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the ``sats`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sats",
        description="SATs: symmetry-aware segmentation of the nasopharyngeal GTV on planning CT. "
        "Research use only, not for clinical use.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level of messages on stderr (default INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(subparsers)
    cli_model.add_commands(subparsers)
    cli_dicom.add_commands(subparsers)
    cli_service.add_commands(subparsers)
    cli_bench.add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sats`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # highdicom logs every module it copies at INFO; keep its warnings only.
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        return int(args.handler(args))
    except SATsError as error:
        logger.error("%s [%s]", error, error.code)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

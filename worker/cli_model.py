"""``sats`` subcommands that work on NIfTI volumes and models (no DICOM)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _weights_dir() -> Path:
    """Return the folder of the shipped model and atlas."""
    return Path(__file__).resolve().parent.parent / "model" / "weights"


def default_model() -> Path:
    return _weights_dir() / "sats-openkbp-ptv70-cpu.safetensors"


def default_atlas() -> Path:
    return _weights_dir() / "atlas-hn-4mm.nii.gz"


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        default=default_model(),
        help="model weights (.safetensors with .json beside it; default: the shipped model)",
    )
    parser.add_argument(
        "--atlas",
        type=Path,
        default=default_atlas(),
        help="symmetric atlas NIfTI for atlas-mode models (default: the shipped atlas)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument(
        "--step", type=float, default=0.5, help="sliding-window step as a fraction of the patch size (default 0.5)"
    )
    parser.add_argument(
        "--mirror-tta",
        action="store_true",
        help="also predict the left-right mirror image and average (about 2x slower)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def make_predictor(args: argparse.Namespace) -> Any:
    import torch

    from model.predict import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    return Predictor(
        args.model, atlas=args.atlas, device=torch.device(args.device), step_fraction=args.step, mirror=args.mirror_tta
    )


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the model subcommands on ``subparsers``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a model on a labelled dataset",
        description="Predict every case of a labelled dataset and write cases.csv (per case: dsc, "
        "asd_mm, hd95_mm, volumes in cc), summary.json (mean, std, median per metric) and dsc.png "
        "into OUTPUT. Metrics are computed on each CT's own grid.",
    )
    parser.add_argument("data_root", type=Path, help="dataset folder")
    parser.add_argument(
        "--layout",
        choices=["nnunet", "segrap", "openkbp"],
        default="nnunet",
        help="dataset layout (default nnunet: imagesTs/ and labelsTs/)",
    )
    parser.add_argument("--split", default=None, help="split: Ts (default) or Tr for nnunet; the subfolder for openkbp")
    parser.add_argument(
        "--label", type=int, default=None, help="tumour label value (default: 1 for nnunet, 10 = PTV70 for openkbp)"
    )
    parser.add_argument("--max-cases", type=int, default=None, help="evaluate only the first N cases")
    parser.add_argument("--save-predictions", action="store_true", help="also write each predicted mask as NIfTI")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    add_model_options(parser)
    parser.set_defaults(handler=_run_evaluate)

    parser = subparsers.add_parser(
        "predict",
        help="predict the tumour mask of one CT volume (NIfTI, NRRD or MHA)",
        description="Symmetrize a CT volume, run sliding-window inference and write the tumour mask "
        "on the CT's own grid (uint8, 1 = tumour) plus a JSON report.",
    )
    parser.add_argument("ct", type=Path, help="CT volume in HU readable by SimpleITK")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    add_model_options(parser)
    parser.set_defaults(handler=_run_predict)

    parser = subparsers.add_parser(
        "symmetrize",
        help="find the mid-sagittal plane and write the symmetrized CT",
        description="Register a CT to the atlas (or to its own mirror image) and write the CT resampled "
        "into the symmetric frame plus the plane (unit normal and offset in mm, LPS) as JSON.",
    )
    parser.add_argument("ct", type=Path, help="CT volume in HU readable by SimpleITK")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--mode", choices=["atlas", "self"], default="atlas", help="symmetrization mode (default atlas)"
    )
    parser.add_argument(
        "--transform",
        choices=["similarity", "affine"],
        default="similarity",
        help="atlas registration transform (default similarity)",
    )
    parser.add_argument("--atlas", type=Path, default=default_atlas(), help="atlas NIfTI (default: the shipped atlas)")
    parser.add_argument("--spacing", default="2,2,2", help="output spacing D,H,W in mm (default 2,2,2)")
    parser.set_defaults(handler=_run_symmetrize)

    parser = subparsers.add_parser(
        "build-atlas",
        help="build a symmetric head-and-neck atlas from CT volumes",
        description="Symmetrize each CT against its own mirror, register them to each other, average "
        "and average with the mirror image. Writes a 4 mm isotropic int16 NIfTI.",
    )
    parser.add_argument("cts", type=Path, nargs="+", help="CT volumes in HU (NIfTI); the first sets the field of view")
    parser.add_argument("-o", "--output", type=Path, required=True, help="atlas file to write (.nii.gz)")
    parser.add_argument("--rounds", type=int, default=2, help="registration-and-averaging rounds (default 2)")
    parser.set_defaults(handler=_run_build_atlas)

    parser = subparsers.add_parser(
        "info",
        help="show a model's metadata and parameter count",
        description="Print the model metadata (architecture, spacing, training data, metrics) and the "
        "parameter counts of this model and of the full-size default architecture.",
    )
    parser.add_argument("--model", type=Path, default=default_model(), help="model weights (default: shipped model)")
    parser.set_defaults(handler=_run_info)


def _run_evaluate(args: argparse.Namespace) -> int:
    from model.data import discover
    from model.evaluate import evaluate_cases, format_summary

    default_split = {"nnunet": "Ts", "openkbp": "validation", "segrap": ""}[args.layout]
    cases = discover(args.data_root, args.layout, args.split or default_split, args.label)
    if args.max_cases:
        cases = cases[: args.max_cases]
    predictor = make_predictor(args)
    summary = evaluate_cases(predictor, cases, args.output, save_predictions=args.save_predictions)
    print(format_summary(summary))
    print(f"wrote {args.output / 'summary.json'}, {args.output / 'cases.csv'} and {args.output / 'dsc.png'}")
    return 0


def _write_prediction(ct: Any, prediction: Any, predictor: Any, output: Path, extra: dict[str, Any]) -> dict[str, Any]:
    import SimpleITK as sitk

    from model.geometry import spacing_dhw
    from model.qa import write_qa_png

    output.mkdir(parents=True, exist_ok=True)
    mask_image = sitk.GetImageFromArray(prediction.mask)
    mask_image.CopyInformation(ct)
    sitk.WriteImage(mask_image, str(output / "mask.nii.gz"), True)
    spacing = spacing_dhw(ct)
    volume_cc = float(prediction.mask.sum()) * float(np.prod(spacing)) / 1000.0
    superior_last = ct.GetDirection()[8] > 0  # slice direction has a +z (head) component
    write_qa_png(sitk.GetArrayFromImage(ct), prediction.mask, spacing, output / "qa.png", superior_last)
    report = {
        "model": {
            "name": predictor.info.name,
            "weights_sha256": predictor.weights_sha256,
            "intended_use": predictor.info.intended_use,
        },
        "grid": {"size_dhw": list(prediction.mask.shape), "spacing_dhw_mm": list(spacing)},
        "mid_sagittal_plane": {
            "normal_lps": prediction.symmetric.plane.normal.round(6).tolist(),
            "offset_mm": round(prediction.symmetric.plane.offset_mm, 3),
            "mode": prediction.symmetric.mode,
        },
        "tumour_volume_cc": round(volume_cc, 3),
        "timings_s": {k: round(v, 3) for k, v in prediction.timings_s.items()},
        **extra,
    }
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _run_predict(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from model.errors import InputError

    if not args.ct.is_file():
        raise InputError(f"CT file not found: {args.ct}", code="input.not_found")
    ct = sitk.ReadImage(str(args.ct), sitk.sitkFloat32)
    predictor = make_predictor(args)
    prediction = predictor.predict(ct)
    report = _write_prediction(ct, prediction, predictor, args.output, {"input": args.ct.name})
    print(json.dumps(report, indent=2))
    return 0


def _run_symmetrize(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from model.errors import InputError
    from model.symmetry import symmetrize

    if not args.ct.is_file():
        raise InputError(f"CT file not found: {args.ct}", code="input.not_found")
    try:
        spacing = tuple(float(v) for v in args.spacing.split(","))
    except ValueError as error:
        raise InputError(f"--spacing must be three numbers in mm like 2,2,2, got {args.spacing!r}") from error
    ct = sitk.ReadImage(str(args.ct), sitk.sitkFloat32)
    atlas = sitk.ReadImage(str(args.atlas), sitk.sitkFloat32) if args.mode == "atlas" else None
    result = symmetrize(ct, spacing, mode=args.mode, atlas=atlas, transform_type=args.transform)
    args.output.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(sitk.Round(result.image), sitk.sitkInt16), str(args.output / "symmetric.nii.gz"), True)
    plane = {
        "normal_lps": result.plane.normal.tolist(),
        "offset_mm": result.plane.offset_mm,
        "mode": result.mode,
        "metric": result.metric,
    }
    (args.output / "plane.json").write_text(json.dumps(plane, indent=2) + "\n")
    print(json.dumps(plane, indent=2))
    return 0


def _run_build_atlas(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from model.atlas import build_atlas
    from model.errors import InputError

    missing = [str(p) for p in args.cts if not p.is_file()]
    if missing:
        raise InputError(f"CT files not found: {missing}", code="input.not_found")
    cts = [sitk.ReadImage(str(p), sitk.sitkFloat32) for p in args.cts]
    atlas = build_atlas(cts, rounds=args.rounds)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(sitk.Round(atlas), sitk.sitkInt16), str(args.output), True)
    print(f"wrote {args.output} ({'x'.join(map(str, atlas.GetSize()))} voxels, x,y,z)")
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from model.checkpoint import load_model
    from model.network import NetworkConfig, ResidualUNet, count_parameters

    network, metadata = load_model(args.model)
    info = metadata.to_dict()
    info["parameters"] = count_parameters(network)
    info["full_size_default_parameters"] = count_parameters(ResidualUNet(NetworkConfig()))
    info["published_parameters"] = 30_700_000
    print(json.dumps(info, indent=2))
    return 0

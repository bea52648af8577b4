"""``sats`` subcommands that read DICOM CT series and write RTSTRUCT and SEG."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from worker.cli_model import add_model_options, make_predictor

logger = logging.getLogger(__name__)


def _rgb(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected three integers 0-255 like 255,48,48, got {text!r}") from error
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise argparse.ArgumentTypeError(f"expected three integers 0-255 like 255,48,48, got {text!r}")
    return (values[0], values[1], values[2])


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--roi-name", default="GTVnx_SATs", help="structure name in the RTSTRUCT and SEG (default GTVnx_SATs)"
    )
    parser.add_argument(
        "--color", type=_rgb, default=(255, 48, 48), help="structure display colour as R,G,B 0-255 (default 255,48,48)"
    )
    parser.add_argument("--no-seg", action="store_true", help="write only the RTSTRUCT, not the DICOM SEG")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the DICOM subcommands on ``subparsers``."""
    parser = subparsers.add_parser(
        "segment",
        help="segment the GTV of a DICOM CT series; write RTSTRUCT, SEG, report and QA picture",
        description="Read the planning CT series in INPUT (a folder searched recursively, or a zip of one), "
        "symmetrize it, run the model with sliding-window inference and write into OUTPUT: rtstruct.dcm "
        "(RT Structure Set), seg.dcm (DICOM Segmentation), report.json (job report with warnings, timings, "
        "GTV volume in cc, laterality and asymmetry score) and qa.png (three views with the contour). "
        "Both DICOM objects reference the CT's study, frame of reference and slices. Exit status 2 with an "
        "error code when the input is rejected. Research use only, not for clinical use.",
    )
    parser.add_argument("input", type=Path, help="folder (or zip) of DICOM files with the planning CT series")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output folder, created if missing; files of an earlier run there are replaced",
    )
    parser.add_argument(
        "--series",
        default=None,
        metavar="UID",
        help="SeriesInstanceUID to segment (default: the axial CT series with the most slices)",
    )
    _add_output_options(parser)
    add_model_options(parser)
    parser.set_defaults(handler=_run_segment)

    parser = subparsers.add_parser(
        "demo",
        help="write a synthetic DICOM CT series and segment it with the shipped model",
        description="Generate a synthetic head-and-neck CT series (DICOM, no patient data) with a one-sided "
        "lesion, the head turned a few degrees, into OUTPUT/ct, then run 'sats segment' on it into OUTPUT. "
        "The phantom is not anatomy the model was trained on: the run shows the pipeline, not accuracy.",
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("sats-demo"), help="output folder (default ./sats-demo)"
    )
    _add_output_options(parser)
    add_model_options(parser)
    parser.set_defaults(handler=_run_demo)


def _print_summary(report: dict, output: Path) -> None:
    result = report["result"]
    files = [o["file"] if isinstance(o, dict) else o for o in report["outputs"].values()]
    print(json.dumps({"result": result, "timings_s": report["timings_s"]}, indent=2))
    print(
        f"{report['input']['slice_count']} slices, GTV {result['gtv_volume_cc']} cc ({result['laterality']}), "
        f"{len(report['warnings'])} warning(s); wrote {', '.join(files)} and report.json to {output}/"
    )


def _ready_predictor(args: argparse.Namespace) -> Any:
    """Load the model and do the first-use work outside the job's clock, as the worker does."""
    from worker.pipeline import freeze_startup_objects, warm_up

    predictor = make_predictor(args)
    warm_up()
    freeze_startup_objects()
    return predictor


def _run_segment(args: argparse.Namespace) -> int:
    from worker.pipeline import SegmentOptions, segment_series

    options = SegmentOptions(
        series_uid=args.series, roi_name=args.roi_name, color_rgb=args.color, write_seg=not args.no_seg
    )
    report = segment_series(args.input, args.output, _ready_predictor(args), options)
    _print_summary(report, args.output)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from worker.pipeline import SegmentOptions, segment_series
    from worker.synthetic_dicom import write_demo_series

    ct_folder = args.output / "ct"
    files = write_demo_series(ct_folder)
    print(f"wrote a synthetic CT series of {len(files)} slices to {ct_folder}/")
    options = SegmentOptions(roi_name=args.roi_name, color_rgb=args.color, write_seg=not args.no_seg)
    report = segment_series(ct_folder, args.output, _ready_predictor(args), options)
    _print_summary(report, args.output)
    return 0

"""``sats bench``: benchmarks against the tools a user would otherwise pick.

Each subcommand prints progress on stderr and, as its last line on stdout, one JSON
object with the fields docs/benchmarks.md describes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from worker.cli_model import add_model_options


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``sats bench`` and its subcommands on ``subparsers``."""
    parser = subparsers.add_parser(
        "bench",
        help="run a benchmark (inference, load, rtstruct, e2e, service); the last output line is JSON",
        description="Benchmarks, measured side by side in one run with alternating repeats; medians are "
        "reported. Results and the machine are recorded in docs/benchmarks.md.",
    )
    benches = parser.add_subparsers(
        dest="bench", required=True, metavar="BENCHMARK", help="inference, load, rtstruct, e2e or service"
    )

    def series_argument(bench: argparse.ArgumentParser) -> None:
        bench.add_argument("series", type=Path, help="folder of the CT series (for example the 90-slice H&N CT)")
        bench.add_argument("--repeats", type=int, default=3, help="timed runs of each side (default 3)")

    bench = benches.add_parser(
        "inference",
        help="our sliding-window inference against MONAI's sliding_window_inference",
        description="Symmetrize, crop and normalise the series as the pipeline does, then run the model's "
        "sliding window (step 0.5, Gaussian weighting) through ours and through MONAI. Fields: ours_s, monai_s, "
        "speedup_vs_monai, dsc_vs_fp32, gflops_per_s, peak_gflops_per_s, fraction_of_peak.",
    )
    series_argument(bench)
    add_model_options(bench)
    bench.set_defaults(handler=_run_inference)

    bench = benches.add_parser(
        "load",
        help="reading the series into HU: ours against SimpleITK's ImageSeriesReader",
        description="Fields: ours_s, sitk_s, speedup_vs_sitk, max_abs_hu_diff (must be 0).",
    )
    series_argument(bench)
    bench.set_defaults(handler=_run_load)

    bench = benches.add_parser(
        "rtstruct",
        help="writing the RTSTRUCT of a real-size mask: ours against rt-utils",
        description="The mask is soft tissue (-100 to 100 HU) in the central third of the CT. Fields: ours_s, "
        "rtutils_s, speedup_vs_rtutils.",
    )
    series_argument(bench)
    bench.set_defaults(handler=_run_rtstruct)

    bench = benches.add_parser(
        "e2e",
        help="sats segment with the default weights, per stage, with peak memory",
        description="Fields: total_s, one field per stage (load, symmetrize, preprocess, infer, postprocess, "
        "write), non_inference_fraction, process_s, peak_rss_mb.",
    )
    series_argument(bench)
    bench.set_defaults(handler=_run_e2e)

    bench = benches.add_parser(
        "service",
        help="N synthetic studies uploaded concurrently through the gateway to K local workers",
        description="Starts the gateway and K Celery workers on loopback against Redis database 14. Fields: "
        "studies, wall_s, studies_per_hour, p95_queue_wait_s, lost (must be 0).",
    )
    bench.add_argument("--studies", type=int, default=10, help="number of studies (default 10)")
    bench.add_argument("--workers", type=int, default=2, help="number of worker processes (default 2)")
    bench.set_defaults(handler=_run_service)


def _print(result: dict[str, Any]) -> int:
    print(json.dumps(result))
    return 0


def _prepared_volume(series: Path, predictor: Any) -> Any:
    """Return the network's input for the series: symmetrized, cropped to the body, normalised."""
    from model.geometry import to_array
    from worker.series import read_ct_series

    symmetric = predictor.symmetrize(read_ct_series(series).image)
    _, normalized = predictor.preprocess(to_array(symmetric.image))
    return normalized


def _run_inference(args: argparse.Namespace) -> int:
    from worker.benchmarks.inference import run_inference_benchmark
    from worker.cli_model import make_predictor

    predictor = make_predictor(args)
    volume = _prepared_volume(args.series, predictor)
    result = run_inference_benchmark(predictor.network, volume, tuple(predictor.info.patch_size), args.repeats)
    return _print({"model": predictor.info.name, **result})


def _run_load(args: argparse.Namespace) -> int:
    from worker.benchmarks.dicom_io import run_load_benchmark

    return _print(run_load_benchmark(args.series, args.repeats))


def _run_rtstruct(args: argparse.Namespace) -> int:
    from worker.benchmarks.dicom_io import run_rtstruct_benchmark

    return _print(run_rtstruct_benchmark(args.series, args.repeats))


def _run_e2e(args: argparse.Namespace) -> int:
    from worker.benchmarks.e2e import run_e2e_benchmark

    return _print(run_e2e_benchmark(args.series, args.repeats))


def _run_service(args: argparse.Namespace) -> int:
    from worker.benchmarks.service import run_service_benchmark

    return _print(run_service_benchmark(studies=args.studies, workers=args.workers))

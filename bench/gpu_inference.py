"""Inference speed of the full-size SATs network on one CUDA GPU: single windows and a whole volume.

Measures the forward pass of one 56 x 192 x 192 window (D, H, W) at batch 1 and 2 in
fp32, bf16 autocast, bf16 with channels_last_3d, and bf16 under torch.compile (modes
max-autotune-no-cudagraphs and reduce-overhead, which uses CUDA graphs). It then times one
pass of ``model.inference.sliding_window_probabilities`` over a synthetic 90-slice
512 x 512 CT at 3 x 1 x 1 mm, resampled to the network's 3 x 0.8 x 0.8 mm grid
(90 x 640 x 640 voxels). The network is ``ResidualUNet`` with the default
``NetworkConfig`` and the strides planned for 3 x 0.8 x 0.8 mm, which has 30.9 M
parameters. Its weights are random because the speed does not depend on them. The
default strides (2, 2, 2) would need a window depth divisible by 16, which 56 is not.

Needs only torch, numpy and this repository's ``model`` package. Prints a table and, as
the last line, one JSON object. Exit status 1 when no CUDA device is available.

Usage::

    python bench/gpu_inference.py            # one CUDA GPU, an estimated 3 to 8 minutes
    python bench/gpu_inference.py --dry-run  # a tiny network and window on the CPU, checks the code paths

Expected figures on one NVIDIA H200 SXM. This is an ESTIMATE, NOT MEASURED:

- Work: 1.80 TFLOP per 56 x 192 x 192 window at batch 1, counted by this script with
  ``torch.utils.flop_counter.FlopCounterMode``. The count covers convolutions and
  transposed convolutions only, at 2 FLOP per multiply-add.
- Peak: about 989 TFLOP/s dense bf16 on the tensor cores (the published H200 SXM figure;
  1,979 counts 2:4 sparsity). 3-D convolutions in cuDNN are assumed to reach 30 to 50 %
  of peak, which is 300 to 500 TFLOP/s or 3.6 to 6 ms of convolution per window in bf16.
- Eager InstanceNorm, LeakyReLU and concatenation are memory-bound. Roughly 10 to 20 GB
  of activation traffic per window at 4.8 TB/s adds 2 to 4 ms.
- Hence about 6 to 10 ms per window in eager bf16 (180 to 300 TFLOP/s achieved).
  torch.compile can fuse normalisation and activation and approach 4 to 6 ms. fp32 with
  TF32 convolutions should take about twice as long as bf16.
- The whole-volume pass covers 108 windows (3 x 6 x 6) at batch 1 with fp16 autocast,
  about 195 TFLOP, so roughly 0.7 to 1.2 s plus the host-to-device copies.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

#: Network input spacing (D, H, W) in mm for which the strides are planned.
MODEL_SPACING_MM = (3.0, 0.8, 0.8)
#: Window of the full-size network (D, H, W), the training patch size.
WINDOW_DHW = (56, 192, 192)
#: Window and volume of the dry run: the smallest sizes the strides allow.
DRY_WINDOW_DHW = (8, 32, 32)
DRY_VOLUME_DHW = (10, 40, 40)

#: Source CT of the whole-volume pass, before resampling: slices, rows = columns, and spacing in mm.
SOURCE_SLICES = 90
SOURCE_PIXELS = 512
SOURCE_SLICE_SPACING_MM = 3.0


@dataclass(frozen=True)
class Mode:
    """One way of running the network."""

    name: str
    description: str
    autocast_dtype: torch.dtype | None
    channels_last: bool = False
    allow_tf32: bool = True
    compile_mode: str | None = None


EAGER_MODES = [
    Mode("fp32-strict", "fp32, TF32 off", None, allow_tf32=False),
    Mode("fp32", "fp32, TF32 convolutions (PyTorch default)", None),
    Mode("bf16", "bf16 autocast", torch.bfloat16),
    Mode("bf16-cl3d", "bf16 autocast, channels_last_3d", torch.bfloat16, channels_last=True),
]
COMPILED_MODES = [
    Mode(
        "compile-autotune",
        "bf16 autocast, torch.compile max-autotune-no-cudagraphs",
        torch.bfloat16,
        compile_mode="max-autotune-no-cudagraphs",
    ),
    Mode(
        "compile-cudagraphs",
        "bf16 autocast, torch.compile reduce-overhead (CUDA graphs)",
        torch.bfloat16,
        compile_mode="reduce-overhead",
    ),
]


class AutocastNetwork(nn.Module):
    """The network run under autocast to ``dtype`` (``None``: plain fp32)."""

    def __init__(self, network: nn.Module, device_type: str, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.network = network
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            return self.network(x)


def _allow_import_without_simpleitk() -> None:
    """Register a placeholder SimpleITK module when the real one is not installed.

    ``model.inference`` imports ``model.geometry``, which imports SimpleITK at module level
    (and reads ``sitk.sitkFloat32`` for a default argument). The sliding-window code never
    calls SimpleITK, so a placeholder lets this script run with torch and numpy only.
    """
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        placeholder = types.ModuleType("SimpleITK")

        def missing(name: str) -> Callable[..., Any]:
            if name.startswith("__"):  # inspect and pickle probe attributes such as __file__
                raise AttributeError(name)

            def fail(*_: Any, **__: Any) -> Any:
                raise RuntimeError(f"SimpleITK.{name} called, but SimpleITK is not installed")

            return fail

        placeholder.__getattr__ = missing  # type: ignore[method-assign]
        sys.modules["SimpleITK"] = placeholder


def build_network(dry_run: bool) -> nn.Module:
    """Return the full-size residual U-Net (or the tiny dry-run one) with random weights, in eval mode."""
    from model.network import NetworkConfig, ResidualUNet, plan_strides

    strides = plan_strides(MODEL_SPACING_MM)
    if dry_run:
        config = NetworkConfig(base_features=4, max_features=8, strides=strides, encoder_blocks=(1, 1, 1, 1, 1))
    else:
        config = NetworkConfig(strides=strides)
    torch.manual_seed(0)
    return ResidualUNet(config).eval()


def count_window_flops(network: nn.Module, window: tuple[int, int, int]) -> int:
    """Return the FLOPs of one forward pass at batch 1, counted on the meta device (no memory, no compute)."""
    meta_network = copy.deepcopy(network).to("meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta_network(torch.empty(1, 1, *window, device="meta"))
    return int(counter.get_total_flops())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(call: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    """Return the duration of each of ``repeats`` calls in ms (CUDA events on a GPU, wall clock on the CPU)."""
    durations = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            durations.append(start.elapsed_time(end))
        else:
            started = time.perf_counter()
            call()
            durations.append((time.perf_counter() - started) * 1000)
    return durations


def _prepare(mode: Mode, base: nn.Module, device: torch.device, dry_run: bool) -> nn.Module:
    """Return a copy of ``base`` on ``device`` set up for ``mode`` (memory format, autocast, compile)."""
    network = copy.deepcopy(base).to(device)
    if mode.channels_last:
        # Module.to accepts memory_format at run time, but torch's type stubs omit it.
        network = network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    wrapped: nn.Module = AutocastNetwork(network, device.type, mode.autocast_dtype)
    if mode.compile_mode is not None:
        torch._dynamo.reset()
        # The dry run uses the eager backend, which checks tracing without building kernels on the CPU.
        options: dict[str, Any] = {"backend": "eager"} if dry_run else {"mode": mode.compile_mode}
        wrapped = torch.compile(wrapped, dynamic=False, **options)  # type: ignore[assignment]
    return wrapped


def measure_mode(
    mode: Mode,
    base: nn.Module,
    window: tuple[int, int, int],
    flops: int,
    device: torch.device,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Time one forward pass of ``mode`` at batch 1 and 2, and return one result row per batch size."""
    torch.backends.cudnn.allow_tf32 = mode.allow_tf32
    network = _prepare(mode, base, device, args.dry_run)
    rows = []
    for batch in (1, 2):
        x = torch.randn(batch, 1, *window, device=device)
        if mode.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)

        def call(x: torch.Tensor = x) -> torch.Tensor:
            if mode.compile_mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            return network(x)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            started = time.perf_counter()
            call()  # compiles, autotunes and lets cuDNN pick algorithms
            _synchronize(device)
            first_call_s = time.perf_counter() - started
            _time_calls(call, args.warmup, device)
            durations = _time_calls(call, args.repeats, device)
        ms_per_call = statistics.median(durations)
        rows.append(
            {
                "mode": mode.name,
                "description": mode.description,
                "batch": batch,
                "ms_per_call": round(ms_per_call, 3),
                "ms_per_window": round(ms_per_call / batch, 3),
                "tflops": round(flops * batch / (ms_per_call / 1000) / 1e12, 3),
                "first_call_s": round(first_call_s, 2),
                "peak_memory_gib": _peak_memory_gib(device),
            }
        )
    torch.backends.cudnn.allow_tf32 = True
    return rows


def _peak_memory_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def synthetic_volume(shape_dhw: tuple[int, int, int], pixel_spacing_mm: float) -> np.ndarray:
    """Return a normalised ``(D, H, W)`` float32 head-sized phantom resampled to the model spacing.

    The source grid is ``shape_dhw`` at ``SOURCE_SLICE_SPACING_MM`` x ``pixel_spacing_mm``
    x ``pixel_spacing_mm``, and trilinear resampling gives the grid the network expects.
    """
    depth, rows, columns = shape_dhw
    generator = np.random.default_rng(0)
    y, x = np.ogrid[:rows, :columns]
    body = ((y - rows / 2) / (0.35 * rows)) ** 2 + ((x - columns / 2) / (0.3 * columns)) ** 2 <= 1.0
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)
    source = np.broadcast_to(hu, shape_dhw) + generator.normal(0.0, 10.0, shape_dhw).astype(np.float32)
    normalised = torch.from_numpy(np.ascontiguousarray((source + 17.0) / 190.0, dtype=np.float32))
    spacing = (SOURCE_SLICE_SPACING_MM, pixel_spacing_mm, pixel_spacing_mm)
    size = [round(n * s / m) for n, s, m in zip(shape_dhw, spacing, MODEL_SPACING_MM, strict=True)]
    resampled = nn.functional.interpolate(normalised[None, None], size=size, mode="trilinear", align_corners=False)
    return resampled[0, 0].numpy()


def measure_volume(
    base: nn.Module,
    window: tuple[int, int, int],
    flops: int,
    device: torch.device,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Time ``sliding_window_probabilities`` over a whole synthetic volume (fp16 autocast on CUDA)."""
    from model.inference import sliding_window_probabilities, window_starts

    source_shape = DRY_VOLUME_DHW if args.dry_run else (SOURCE_SLICES, SOURCE_PIXELS, SOURCE_PIXELS)
    pixel_spacing = MODEL_SPACING_MM[1] if args.dry_run else args.pixel_spacing
    volume = synthetic_volume(source_shape, pixel_spacing)
    starts = [window_starts(max(s, p), p, 0.5) for s, p in zip(volume.shape, window, strict=True)]
    windows = int(np.prod([len(axis) for axis in starts]))
    network = copy.deepcopy(base).to(device)

    def run() -> np.ndarray:
        return sliding_window_probabilities(network, volume, window, step_fraction=0.5, device=device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run()  # lets cuDNN pick algorithms
    durations = []
    for _ in range(args.volume_repeats):
        _synchronize(device)
        started = time.perf_counter()
        run()
        _synchronize(device)
        durations.append(time.perf_counter() - started)
    seconds = statistics.median(durations)
    return {
        "source_dhw": list(source_shape),
        "source_spacing_mm": [SOURCE_SLICE_SPACING_MM, pixel_spacing, pixel_spacing],
        "volume_dhw": list(volume.shape),
        "windows": windows,
        "precision": "fp16 autocast on CUDA (model.inference.autocast_context), batch 1, step 0.5, no mirroring",
        "s": round(seconds, 3),
        "runs_s": [round(d, 3) for d in durations],
        "tflops": round(flops * windows / seconds / 1e12, 3),
        "peak_memory_gib": _peak_memory_gib(device),
    }


def _print_table(rows: list[dict[str, Any]], volume: dict[str, Any] | None) -> None:
    print(f"{'mode':<20} {'batch':>5} {'ms/call':>9} {'ms/window':>10} {'TFLOP/s':>8} {'first s':>8} {'GiB':>6}")
    for row in rows:
        memory = "-" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f}"
        print(
            f"{row['mode']:<20} {row['batch']:>5} {row['ms_per_call']:>9.2f} {row['ms_per_window']:>10.2f} "
            f"{row['tflops']:>8.1f} {row['first_call_s']:>8.2f} {memory:>6}"
        )
    if volume is not None:
        print(
            f"sliding window over {volume['volume_dhw']} ({volume['windows']} windows): {volume['s']:.3f} s, "
            f"{volume['tflops']:.1f} TFLOP/s"
        )


def _environment(device: torch.device, network: nn.Module, window: tuple[int, int, int], flops: int) -> dict[str, Any]:
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "parameters": sum(p.numel() for p in network.parameters()),
        "window_dhw": list(window),
        "tflop_per_window": round(flops / 1e12, 4),
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="run a tiny network and window on the CPU")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per mode and batch (default 5)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per mode and batch (default 20)")
    parser.add_argument("--volume-repeats", type=int, default=3, help="timed whole-volume passes (default 3)")
    parser.add_argument(
        "--pixel-spacing", type=float, default=1.0, help="pixel spacing of the 512 x 512 source CT in mm (default 1.0)"
    )
    parser.add_argument("--skip-compile", action="store_true", help="skip the torch.compile modes")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="seconds after which the remaining modes are skipped, though a running mode is not stopped (default 420)",
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let cuDNN time its algorithms for each shape (default on, whereas the SATs worker keeps PyTorch's off)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            f"CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "run this on a machine with an NVIDIA GPU, or pass --dry-run to check the code on the CPU",
            file=sys.stderr,
        )
        return 1
    _allow_import_without_simpleitk()
    began = time.monotonic()
    device = torch.device("cpu" if args.dry_run else "cuda")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    window = DRY_WINDOW_DHW if args.dry_run else WINDOW_DHW
    base = build_network(args.dry_run)
    flops = count_window_flops(base, window)
    result: dict[str, Any] = {**_environment(device, base, window, flops), "dry_run": args.dry_run}

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    volume: dict[str, Any] | None = None
    steps: list[Mode | str] = [*EAGER_MODES, "volume", *([] if args.skip_compile else COMPILED_MODES)]
    for step in steps:
        name = step if isinstance(step, str) else step.name
        if time.monotonic() - began > args.budget_s:
            skipped.append({"mode": name, "reason": f"time budget of {args.budget_s:.0f} s used up"})
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            if isinstance(step, str):
                volume = measure_volume(base, window, flops, device, args)
            else:
                rows += measure_mode(step, base, window, flops, device, args)
        except Exception as error:  # a failing mode (compiler error, out of memory) must not lose the others
            if args.dry_run:
                raise
            print(f"{name} failed: {error!r}", file=sys.stderr, flush=True)
            skipped.append({"mode": name, "reason": f"failed: {error!r}"[:500]})

    result.update(windows=rows, sliding_window=volume, skipped=skipped, total_s=round(time.monotonic() - began, 1))
    _print_table(rows, volume)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sliding-window inference: ours (bf16 autocast where the CPU has it) against MONAI's.

Both run the same network on the same normalised volume with the same window, overlap
(step 0.5 of the window) and Gaussian weighting (sigma 0.125 of the window). MONAI runs
with its defaults otherwise (fp32, one window per batch). Runs alternate and medians are
reported, because this machine is shared and noisy.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from model.inference import cpu_supports_bf16, sliding_window_probabilities, window_starts
from model.metrics import dice_coefficient


def _timed(run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def window_flops(network: torch.nn.Module, patch: tuple[int, int, int]) -> int:
    """Return the floating-point operations of one window's forward pass (2 per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        network(torch.zeros((1, 1, *patch)))
    return int(counter.get_total_flops())


#: Layers timed for the machine's peak: (channels in and out, input size (D, H, W)).
PEAK_LAYERS = ((16, (64, 80, 80)), (32, (32, 40, 40)), (64, (32, 64, 64)), (128, (16, 32, 32)))


def peak_conv_gflops(seconds_per_layer: float = 1.5) -> float:
    """Measure this machine's best 3x3x3 convolution throughput over :data:`PEAK_LAYERS`, in GFLOP/s.

    Each layer runs for ``seconds_per_layer`` in bf16 autocast (fp32 on a CPU without
    native bf16) after a warm-up. The maximum over the layers serves as the attainable
    peak; oneDNN is fastest at 16 to 32 channels on these CPUs.
    """
    dtype = torch.bfloat16 if cpu_supports_bf16() else torch.float32
    best = 0.0
    for channels, size in PEAK_LAYERS:
        conv = torch.nn.Conv3d(channels, channels, 3, padding=1).eval()
        data = torch.randn(1, channels, *size)
        flops = 2 * channels * channels * 27 * int(np.prod(size))
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype == torch.bfloat16):
            conv(data)
            runs = 0
            started = time.perf_counter()
            while time.perf_counter() - started < seconds_per_layer:
                conv(data)
                runs += 1
        best = max(best, flops * runs / (time.perf_counter() - started) / 1e9)
    return best


def run_inference_benchmark(
    network: torch.nn.Module, volume: np.ndarray, patch: tuple[int, int, int], repeats: int = 3
) -> dict[str, Any]:
    """Time ours and MONAI's sliding-window inference on ``volume`` (normalised ``(D, H, W)``).

    Returns the fields of ``sats bench inference``: ``ours_s``, ``monai_s``,
    ``speedup_vs_monai``, ``dsc_vs_fp32``, ``gflops_per_s``, ``peak_gflops_per_s`` and
    ``fraction_of_peak``, plus the window count and the volume shape.
    """
    from monai.inferers import sliding_window_inference

    network = network.eval()
    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]

    def ours() -> np.ndarray:
        return sliding_window_probabilities(network, volume, patch, step_fraction=0.5)

    def monai() -> np.ndarray:
        with torch.no_grad():
            logits = sliding_window_inference(
                tensor, patch, 1, network, overlap=0.5, mode="gaussian", sigma_scale=0.125
            )
        assert isinstance(logits, torch.Tensor)  # one output head, so one tensor
        return torch.sigmoid(logits)[0, 0].numpy()

    ours()  # warm-up: oneDNN builds its kernels on the first call
    ours_times, monai_times = [], []
    for _ in range(repeats):
        seconds, fast = _timed(ours)
        ours_times.append(seconds)
        seconds, reference = _timed(monai)
        monai_times.append(seconds)
    fp32 = sliding_window_probabilities(network, volume, patch, step_fraction=0.5, mixed_precision=False)

    padded = [max(s, p) for s, p in zip(volume.shape, patch, strict=True)]
    windows = int(np.prod([len(window_starts(s, p, 0.5)) for s, p in zip(padded, patch, strict=True)]))
    ours_s = statistics.median(ours_times)
    monai_s = statistics.median(monai_times)
    achieved = window_flops(network, patch) * windows / ours_s / 1e9
    peak = peak_conv_gflops()
    return {
        "volume_dhw": list(volume.shape),
        "patch_dhw": list(patch),
        "windows": windows,
        "bf16": cpu_supports_bf16(),
        "threads": torch.get_num_threads(),
        "ours_s": round(ours_s, 3),
        "monai_s": round(monai_s, 3),
        "speedup_vs_monai": round(monai_s / ours_s, 2),
        "dsc_vs_fp32": round(float(dice_coefficient(fast >= 0.5, fp32 >= 0.5)), 4),
        # MONAI pads with 0 and places windows differently, so its masks differ slightly.
        "dsc_monai_vs_ours_fp32": round(float(dice_coefficient(reference >= 0.5, fp32 >= 0.5)), 4),
        "gflops_per_s": round(achieved, 1),
        "peak_gflops_per_s": round(peak, 1),
        "fraction_of_peak": round(achieved / peak, 3),
    }

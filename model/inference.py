"""Sliding-window inference with Gaussian weighting.

Volumes are ``(D, H, W)`` float32 arrays already normalised for the network; the
result is a tumour probability array of the same shape.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.geometry import LR_AXIS


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Return a ``patch_size`` weight map: a Gaussian with sigma = ``sigma_scale`` x size per axis.

    The centre weighs 1; the minimum is clamped above 0 so every voxel gets some weight.
    """
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in patch_size], indexing="ij")
    exponent = np.zeros(tuple(patch_size), dtype=np.float64)
    for grid, size in zip(grids, patch_size, strict=True):
        centre = (size - 1) / 2
        sigma = max(size * sigma_scale, 1e-6)
        exponent += ((grid - centre) / sigma) ** 2
    weights = np.exp(-0.5 * exponent)
    weights /= weights.max()
    return np.maximum(weights, 1e-4).astype(np.float32)


def window_starts(size: int, patch: int, step_fraction: float) -> list[int]:
    """Return window start indices along one axis so windows tile ``[0, size)`` with overlap.

    ``size`` must be at least ``patch``. The first window starts at 0 and the last ends at
    ``size``; the step is at most ``step_fraction * patch``.
    """
    if size < patch:
        raise ValueError(f"axis size {size} is smaller than the patch {patch}; pad first")
    if size == patch:
        return [0]
    count = int(np.ceil((size - patch) / (patch * step_fraction))) + 1
    return [int(round(v)) for v in np.linspace(0, size - patch, count)]


@functools.cache
def cpu_supports_bf16() -> bool:
    """Return whether the CPU has native bf16 instructions (AVX512-BF16 or AMX-BF16).

    Reads ``/proc/cpuinfo``, so it returns False on systems without it. Without native
    support bf16 autocast is emulated and slower than fp32.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """Return the autocast type for ``device``: fp16 on CUDA, bf16 on a CPU with native bf16.

    None means fp32 without autocast, and is always returned for ``enabled=False``.
    """
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def autocast_context(device: torch.device, enabled: bool) -> torch.autocast | nullcontext[None]:
    """Return the autocast context of :func:`autocast_dtype`, or a no-op for fp32."""
    dtype = autocast_dtype(device, enabled)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def sliding_window_probabilities(
    network: nn.Module,
    volume: np.ndarray,
    patch_size: Sequence[int],
    step_fraction: float = 0.5,
    mirror: bool = False,
    device: torch.device | None = None,
    mixed_precision: bool = True,
) -> np.ndarray:
    """Predict tumour probabilities over a whole volume.

    Parameters
    ----------
    network
        Maps ``(1, 1, d, h, w)`` to logits of the same spatial size.
    volume
        Normalised ``(D, H, W)`` float32 volume in the symmetric frame. Smaller axes are
        padded with the volume minimum, then cropped back.
    patch_size
        Window size ``(D, H, W)``.
    step_fraction
        Step between windows as a fraction of the patch (0.5 = half overlap).
    mirror
        Also predict the left-right mirror image and average (test-time augmentation).
    device
        Torch device; the network must already be on it.
    mixed_precision
        fp16 autocast on CUDA, bf16 on a CPU with native bf16 (see :func:`autocast_context`).

    Returns
    -------
    numpy.ndarray
        ``(D, H, W)`` float32 probabilities in [0, 1].
    """
    if volume.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {volume.shape}")
    if not 0 < step_fraction <= 1:
        raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction!r}")
    device = device or torch.device("cpu")
    patch = [int(p) for p in patch_size]
    pad = [(0, max(0, p - s)) for p, s in zip(patch, volume.shape, strict=True)]
    # Pad W on both sides equally so that a mirror image stays a mirror image.
    extra_w = pad[2][1]
    pad[2] = (extra_w // 2, extra_w - extra_w // 2)
    padded = np.pad(volume, pad, mode="constant", constant_values=float(volume.min()))

    importance = torch.from_numpy(gaussian_importance(patch)).to(device)
    probability_sum = torch.zeros(padded.shape, dtype=torch.float32, device=device)
    weight_sum = torch.zeros(padded.shape, dtype=torch.float32, device=device)
    source = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32)).to(device)
    starts = [window_starts(s, p, step_fraction) for s, p in zip(padded.shape, patch, strict=True)]

    network.eval()
    for d, h, w in itertools.product(*starts):
        region = (slice(d, d + patch[0]), slice(h, h + patch[1]), slice(w, w + patch[2]))
        window = source[region][None, None]
        with autocast_context(device, mixed_precision):
            probabilities = torch.sigmoid(network(window).float())
            if mirror:
                flipped = network(torch.flip(window, dims=(LR_AXIS,))).float()
                probabilities = (probabilities + torch.sigmoid(torch.flip(flipped, dims=(LR_AXIS,)))) / 2
        probability_sum[region] += probabilities[0, 0] * importance
        weight_sum[region] += importance

    result = (probability_sum / weight_sum).cpu().numpy()
    crop = tuple(slice(before, before + size) for (before, _), size in zip(pad, volume.shape, strict=True))
    return np.ascontiguousarray(result[crop], dtype=np.float32)

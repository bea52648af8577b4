"""Check that bf16 autocast computes a network's convolution gradients correctly on the CPU.

torch 2.13.0 on the CPU computes wrong gradients in bf16 autocast for some 3x3x3
convolutions. On a 2-core AMD EPYC with AVX512-BF16, the wrong cases tried all had a batch
of 2 or more, 16 or more input channels and a depth of exactly 2 voxels. Their weight
gradients bore no relation to the fp32 ones and were sometimes infinite. Depths of 1, 3
and 4, 12 channels and a batch of 1 were right. Such a depth occurs at the deepest levels
of small patches. The wrong values are often of normal size, so the loss does not always
become NaN and training can go on with corrupted updates. On a 2-core Intel Xeon with AMX,
the same shapes (depth 2, 16 to 128 channels, batches of 2 and 4) were right, with
relative errors below 0.005, so the fault seems to depend on the CPU. Only these two CPUs
and torch 2.13.0 were tried, so training checks whenever it would run in bf16 on a CPU.

:func:`autocast_gradient_errors` runs every convolution of a network once at the input
shape it receives in training, with random input and output gradient, in bf16 autocast
and in fp32, and lists those whose gradients disagree. The trainer calls it before the
first step and stops with an error when the list is not empty.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

#: Largest accepted ``max |g_bf16 - g_fp32| / max |g_fp32|`` for a weight or input gradient.
#: Correct bf16 convolutions stayed below 0.01 in the tests here (bf16 keeps 8
#: significant bits). The wrong ones seen were near 1 or infinite.
TOLERANCE = 0.05

_CONVOLUTIONS = (nn.Conv3d, nn.ConvTranspose3d)


def convolution_inputs(
    network: nn.Module, input_shapes: Iterable[Sequence[int]]
) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Return (name, module, input shape) of every convolution call in forward passes of ``input_shapes``.

    The forward passes run in evaluation mode without gradients on zero inputs, and the
    network's mode is restored after them. Each (name, shape) pair is listed once.
    """
    calls: dict[tuple[str, tuple[int, ...]], nn.Module] = {}
    handles = []
    for name, module in network.named_modules():
        if isinstance(module, _CONVOLUTIONS):

            def record(
                module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor, name: str = name
            ) -> None:
                calls.setdefault((name, tuple(inputs[0].shape)), module)

            handles.append(module.register_forward_hook(record))
    parameter = next(network.parameters())
    training = network.training
    network.eval()
    try:
        with torch.no_grad():
            for shape in input_shapes:
                network(torch.zeros(tuple(shape), dtype=parameter.dtype, device=parameter.device))
    finally:
        network.train(training)
        for handle in handles:
            handle.remove()
    return [(name, module, shape) for (name, shape), module in calls.items()]


def _relative_error(low: torch.Tensor, reference: torch.Tensor) -> float:
    error = float((low.float() - reference).abs().max() / reference.abs().max().clamp_min(1e-30))
    if math.isnan(error):
        return math.inf  # NaN counts as the worst error.
    return error


def gradient_error(module: nn.Module, input_shape: Sequence[int], dtype: torch.dtype, seed: int = 0) -> float:
    """Return the larger relative error of the weight and input gradients of ``module`` under autocast."""
    generator = torch.Generator().manual_seed(seed)
    parameter = next(module.parameters())
    device = parameter.device
    layer = copy.deepcopy(module).float()
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    x = torch.randn(tuple(input_shape), generator=generator).to(device).requires_grad_(True)
    with torch.no_grad():
        output_shape = layer(x).shape
    grad_output = torch.randn(tuple(output_shape), generator=generator).to(device)
    with torch.autocast(device.type, dtype=dtype):
        low = layer(x)
    low.float().backward(grad_output)
    assert weight.grad is not None and x.grad is not None
    low_weight, low_input = weight.grad.clone(), x.grad.clone()
    weight.grad = None
    x.grad = None
    layer(x).backward(grad_output)
    assert weight.grad is not None and x.grad is not None
    return max(_relative_error(low_weight, weight.grad), _relative_error(low_input, x.grad))


def autocast_gradient_errors(
    network: nn.Module, input_shapes: Iterable[Sequence[int]], dtype: torch.dtype = torch.bfloat16
) -> list[str]:
    """Return one line per convolution whose autocast gradients exceed :data:`TOLERANCE`.

    Each line names the layer, its input shape and the relative error. An empty list
    means every convolution agreed with fp32 at these shapes.
    """
    problems = []
    for name, module, shape in convolution_inputs(network, input_shapes):
        error = gradient_error(module, shape, dtype)
        if not error <= TOLERANCE:
            problems.append(f"{name} on input {shape} (relative gradient error {error:.3g})")
    return problems

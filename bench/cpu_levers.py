"""Per-window inference time of the shipped model on this CPU under each speed lever.

Usage: python bench/cpu_levers.py [--repeats 5]

Levers: fp32; bf16 autocast; bf16 with channels-last 3-D memory layout; bf16 with two
windows per forward pass (time per window); bf16 with torch.compile. Each configuration
runs after a warm-up, the configurations alternate, and medians are reported. The last
output line is one JSON object with milliseconds per window.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch

from model.checkpoint import load_model
from worker.cli_model import default_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (default 5)")
    args = parser.parse_args()

    network, metadata = load_model(default_model())
    network.eval()
    patch = tuple(metadata.patch_size)
    single = torch.randn(1, 1, *patch)
    pair = torch.randn(2, 1, *patch)
    channels_last_network = load_model(default_model())[0].eval().to(memory_format=torch.channels_last_3d)
    compiled = torch.compile(load_model(default_model())[0].eval())

    def run(model: torch.nn.Module, data: torch.Tensor, bf16: bool, channels_last: bool = False) -> Callable[[], None]:
        def call() -> None:
            tensor = data.to(memory_format=torch.channels_last_3d) if channels_last else data
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(tensor)

        return call

    configurations = {
        "fp32": (run(network, single, False), 1),
        "bf16": (run(network, single, True), 1),
        "bf16_channels_last": (run(channels_last_network, single, True, channels_last=True), 1),
        "bf16_batch2": (run(network, pair, True), 2),
        "bf16_compile": (run(compiled, single, True), 1),
    }
    compile_started = time.perf_counter()
    for call, _ in configurations.values():
        call()  # warm-up; the first compiled call compiles
    warm_up_s = time.perf_counter() - compile_started
    times: dict[str, list[float]] = {name: [] for name in configurations}
    for _ in range(args.repeats):
        for name, (call, windows) in configurations.items():
            started = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - started) / windows)
    result = {name: round(1000 * statistics.median(values), 1) for name, values in times.items()}
    result["patch_dhw"] = list(patch)
    result["threads"] = torch.get_num_threads()
    result["warm_up_s"] = round(warm_up_s, 1)
    for name in configurations:
        print(f"{name:20s} {result[name]:8.1f} ms per window", file=sys.stderr)
    print(json.dumps({"ms_per_window": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

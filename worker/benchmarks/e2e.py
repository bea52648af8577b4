"""End to end: ``sats segment`` of one series with the default weights, per stage, with peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def run_e2e_benchmark(folder: Path, repeats: int = 3) -> dict[str, Any]:
    """Segment ``folder`` ``repeats`` times in fresh processes; report the run with the median total.

    Each run is a new ``sats segment`` process, so the figures include nothing cached
    between runs. ``total_s`` is the job's own total (loading the model is not part of
    it); ``process_s`` adds Python start-up and model loading. ``peak_rss_mb`` is the
    process's peak resident memory from ``os.wait4``.
    """
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="sats-e2e-") as output:
            command = [sys.executable, "-m", "worker.cli", "--log-level", "WARNING", "segment", str(folder)]
            command += ["-o", output]
            started = time.monotonic()
            child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            _, status, usage = os.wait4(child.pid, 0)
            process_s = time.monotonic() - started
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"sats segment {folder} exited with {os.waitstatus_to_exitcode(status)}")
            report = json.loads((Path(output) / "report.json").read_text())
        timings = report["timings_s"]
        runs.append({"timings": timings, "process_s": process_s, "peak_rss_mb": usage.ru_maxrss / 1024})
    runs.sort(key=lambda run: run["timings"]["total"])
    median = runs[len(runs) // 2]
    timings = median["timings"]
    total = timings["total"]
    return {
        "series": folder.name,
        "runs": repeats,
        "total_s": total,
        **{f"{stage}_s": seconds for stage, seconds in timings.items() if stage != "total"},
        "non_inference_fraction": round((total - timings["infer"]) / total, 3),
        "process_s": round(median["process_s"], 2),
        "peak_rss_mb": round(max(run["peak_rss_mb"] for run in runs)),
    }

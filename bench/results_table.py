"""Print a Markdown table of ``sats evaluate`` summaries.

Usage::

    python bench/results_table.py LABEL=EVAL_DIR [LABEL=EVAL_DIR ...]

Each EVAL_DIR is an output folder of ``sats evaluate`` (it contains summary.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cell(entry: dict[str, float | None], digits: int) -> str:
    """Format mean +- std of one metric entry."""
    if entry["mean"] is None:
        return "undefined"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def main(arguments: list[str]) -> int:
    if not arguments:
        print(__doc__)
        return 2
    print("| model | cases (failed) | DSC | ASD (mm) | HD95 (mm) | median DSC |")
    print("|---|---|---|---|---|---|")
    for argument in arguments:
        label, _, folder = argument.partition("=")
        summary = json.loads((Path(folder) / "summary.json").read_text())
        undefined = summary["asd_mm"]["undefined"]
        note = f" ({undefined} undefined)" if undefined else ""
        print(
            f"| {label} | {summary['cases']} ({summary['failed']}) | {cell(summary['dsc'], 3)} | "
            f"{cell(summary['asd_mm'], 1)}{note} | {cell(summary['hd95_mm'], 1)} | {summary['dsc']['median']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Print the gateway image's requirements: pyproject.toml's dependencies less the worker-only ones.

The gateway image installs these and then the ``sats`` wheel with ``--no-deps``, so it
contains no torch. pyproject.toml remains the one list of versions, and this file names only
what to leave out.
tests/test_deployment.py checks that everything ``app/`` imports is still installed.

Usage: ``python deploy/gateway_requirements.py [PYPROJECT] > requirements.txt``
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# Distributions that only the worker image needs, as PEP 503 normalized names: the model,
# DICOM pixel decoding, QA pictures, and Flower, which runs from the worker image. A package
# left out here that app/ needs makes the gateway image fail at `import app.main` during the build.
WORKER_ONLY = frozenset(
    {
        "torch",
        "numpy",
        "scipy",
        "simpleitk",
        "highdicom",
        "pylibjpeg",
        "pylibjpeg-libjpeg",
        "pylibjpeg-openjpeg",
        "pylibjpeg-rle",
        "safetensors",
        "matplotlib",
        "tqdm",
        "flower",
    }
)

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """Return the PEP 503 normalized form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """Return the normalized distribution name of a PEP 508 requirement string."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"invalid requirement in pyproject.toml: {requirement!r}")
    return normalize(match.group(1))


def gateway_requirements(pyproject: Path) -> list[str]:
    """Return pyproject.toml's ``project.dependencies`` without the worker-only distributions."""
    with pyproject.open("rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    return [requirement for requirement in dependencies if requirement_name(requirement) not in WORKER_ONLY]


def main(argv: list[str]) -> int:
    """Print one requirement a line for ``pip install -r``."""
    pyproject = Path(argv[1]) if len(argv) > 1 else Path("pyproject.toml")
    sys.stdout.write("".join(f"{requirement}\n" for requirement in gateway_requirements(pyproject)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

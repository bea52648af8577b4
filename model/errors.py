"""Exceptions raised by the model library.

Each carries a stable machine-readable ``code`` so that the worker and the gateway can
map it to a job state and an HTTP status in one place.
"""

from __future__ import annotations


class SATsError(Exception):
    """Base class of every error the project raises on purpose."""

    code = "sats.error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InputError(SATsError):
    """The input cannot be processed as given; the user must change it."""

    code = "input.invalid"


class SymmetrizationError(SATsError):
    """Registration did not find a plausible mid-sagittal plane."""

    code = "symmetry.failed"


class ModelError(SATsError):
    """The model checkpoint is missing, corrupt or incompatible."""

    code = "model.invalid"


class OutputError(SATsError):
    """A result could not be encoded as the requested output (RTSTRUCT, SEG, report)."""

    code = "output.invalid"

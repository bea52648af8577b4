"""SATs gateway: HTTP API, DICOM node and job store. Never imports torch."""

from model import __version__

__all__ = ["__version__"]

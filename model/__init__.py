"""SATs model library: network, losses, symmetrization, training, inference and metrics.

Arrays only: this package reads and writes NIfTI volumes and tensors, never DICOM.
Volume arrays are ``(D, H, W)`` = (slice, row, column); model tensors are
``(N, C, D, H, W)``. Spacings are in millimetres and listed in the same axis order.
"""

__version__ = "0.1.0"

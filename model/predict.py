"""Whole-volume prediction: symmetrize, crop, normalise, sliding window, back to the CT grid."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from model.checkpoint import ModelMetadata, load_model, sha256_file
from model.errors import ModelError
from model.geometry import to_array
from model.inference import sliding_window_probabilities
from model.preprocess import CropBox, body_crop
from model.symmetry import SymmetricVolume, resample_region, symmetrize

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Result of :meth:`Predictor.predict`, on the input CT's own grid.

    Attributes
    ----------
    mask
        ``(D, H, W)`` uint8 tumour mask (1 = tumour) on the CT grid.
    symmetric
        The symmetrization used (plane, transform, symmetric-frame CT).
    symmetric_probabilities
        ``(D, H, W)`` float32 tumour probabilities on the symmetric grid
        (``symmetric.image``), where flipping the W axis mirrors the anatomy.
    timings_s
        Seconds per stage: ``symmetrize``, ``preprocess`` (crop and normalise),
        ``infer`` (sliding window) and ``postprocess`` (back to the CT grid, threshold).
    """

    mask: np.ndarray
    symmetric: SymmetricVolume
    symmetric_probabilities: np.ndarray
    timings_s: dict[str, float] = field(default_factory=dict)


def tumour_mask_on_ct(
    probabilities_sym: np.ndarray, symmetric: SymmetricVolume, ct: sitk.Image, threshold: float
) -> np.ndarray:
    """Return the ``(D, H, W)`` uint8 mask of ``probabilities_sym >= threshold`` resampled onto the CT grid.

    The probabilities are interpolated linearly onto the CT grid and then thresholded.
    Only the CT voxels that map into the bounding box of the symmetric-frame voxels at or
    above ``threshold`` are resampled. A linearly interpolated value is a weighted mean of
    its neighbours, so a CT voxel whose neighbours all lie below the threshold stays below
    it. The mask is the same as resampling every voxel, in a fraction of the time.
    """
    above = probabilities_sym >= threshold
    if not above.any():
        return np.zeros(tuple(reversed(ct.GetSize())), dtype=np.uint8)
    depth, height, width = (np.flatnonzero(above.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1)))
    box = tuple(slice(int(index[0]), int(index[-1]) + 1) for index in (depth, height, width))
    # Outside this box every value is below the threshold, so resampling it as 0 leaves the
    # mask unchanged. Only that region is resampled and thresholded, so the only CT-size
    # array is the uint8 mask itself.
    mask = np.zeros(tuple(reversed(ct.GetSize())), dtype=np.uint8)
    region, probabilities = resample_region(probabilities_sym, symmetric, ct, box)  # type: ignore[arg-type]
    if region is not None:
        mask[region] = probabilities >= threshold
    return mask


class Predictor:
    """Load a model once and predict tumour masks for CT volumes.

    Parameters
    ----------
    weights
        ``.safetensors`` file with its ``.json`` metadata beside it.
    atlas
        Atlas NIfTI, needed when the model was trained in ``atlas`` symmetrization mode.
    device
        Torch device (default CPU).
    step_fraction
        Sliding-window step as a fraction of the patch.
    mirror
        Average with the prediction of the left-right mirror image (test-time augmentation).
    """

    def __init__(
        self,
        weights: Path,
        atlas: Path | None = None,
        device: torch.device | None = None,
        step_fraction: float = 0.5,
        mirror: bool = False,
    ) -> None:
        self.device = device or torch.device("cpu")
        self.network, self.metadata = load_model(weights, self.device)
        self.weights_sha256 = self.metadata.weights_sha256 or sha256_file(weights)
        self.step_fraction = step_fraction
        self.mirror = mirror
        self.atlas: sitk.Image | None = None
        if self.metadata.symmetrization == "atlas":
            if atlas is None or not atlas.is_file():
                raise ModelError(
                    f"model {self.metadata.name} needs the symmetric atlas, not found: {atlas}", code="model.no_atlas"
                )
            expected = (self.metadata.training or {}).get("atlas_sha256")
            if expected and sha256_file(atlas) != expected:
                raise ModelError(
                    f"atlas {atlas} is not the one model {self.metadata.name} was trained with "
                    f"(SHA-256 {expected}); pass that atlas with --atlas",
                    code="model.atlas_mismatch",
                )
            self.atlas = sitk.ReadImage(str(atlas), sitk.sitkFloat32)

    @property
    def info(self) -> ModelMetadata:
        """Metadata of the loaded model."""
        return self.metadata

    def symmetrize(self, ct: sitk.Image) -> SymmetricVolume:
        """Resample ``ct`` into the symmetric frame at the model's spacing, in the model's mode."""
        metadata = self.metadata
        return symmetrize(ct, metadata.spacing_dhw_mm, mode=metadata.symmetrization, atlas=self.atlas)

    def preprocess(self, volume: np.ndarray) -> tuple[CropBox, np.ndarray]:
        """Crop a symmetric-frame ``(D, H, W)`` CT in HU to the body and normalise it for the network."""
        box = body_crop(volume)
        return box, self.metadata.normalization.apply(volume[box.slices])

    def predict(self, ct: sitk.Image, on_stage: Callable[[str], None] | None = None) -> Prediction:
        """Predict the tumour mask of ``ct`` (HU, any orientation) on its own grid.

        ``on_stage`` is called with each stage name (``symmetrize``, ``preprocess``,
        ``infer``, ``postprocess``) as the stage starts, for progress reports.
        """
        metadata = self.metadata
        timings: dict[str, float] = {}
        notify = on_stage or (lambda stage: None)
        notify("symmetrize")
        started = time.monotonic()
        symmetric = self.symmetrize(ct)
        timings["symmetrize"] = time.monotonic() - started

        notify("preprocess")
        started = time.monotonic()
        volume = to_array(symmetric.image)
        box, normalized = self.preprocess(volume)
        timings["preprocess"] = time.monotonic() - started

        notify("infer")
        started = time.monotonic()
        cropped = sliding_window_probabilities(
            self.network,
            normalized,
            metadata.patch_size,
            step_fraction=self.step_fraction,
            mirror=self.mirror,
            device=self.device,
        )
        probabilities_sym = np.zeros(volume.shape, dtype=np.float32)
        probabilities_sym[box.slices] = cropped
        timings["infer"] = time.monotonic() - started

        notify("postprocess")
        started = time.monotonic()
        mask = tumour_mask_on_ct(probabilities_sym, symmetric, ct, metadata.threshold)
        timings["postprocess"] = time.monotonic() - started
        logger.debug("prediction timings %s", timings)
        return Prediction(
            mask=mask,
            symmetric=symmetric,
            symmetric_probabilities=probabilities_sym,
            timings_s=timings,
        )

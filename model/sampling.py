"""Patch sampling and symmetry-preserving augmentation for training.

Each sample is a pair: a patch of the symmetric-frame volume and the patch at the same
index range of the volume flipped along W (the mirror image), with both label patches
(and both auxiliary-mask patches when the cases have one). Arrays are ``(D, H, W)``;
batches are ``(N, 1, D, H, W)`` tensors.

Augmentations keep the left-right symmetry that the margin loss relies on. A transform
is allowed when it commutes with the mirror across the mid-sagittal plane:

- mirroring itself (swapping the volume and its mirror image),
- rotation about the left-right axis (a rotation in the D-H plane),
- scaling within the D-H plane,
- brightness, contrast and gamma changes applied to both branches alike,
- patch position along D and H.

Rotations about the other axes, scaling or shifting along W and elastic deformation
would move the mid-sagittal plane off the centre and are not used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.data import PreparedCase


@dataclass
class PairBatch:
    """A training batch: volume patches, mirrored patches and their masks, ``(N, 1, D, H, W)``.

    The auxiliary masks are None unless every case has an auxiliary mask.
    """

    image: torch.Tensor
    image_mirrored: torch.Tensor
    mask: torch.Tensor
    mask_mirrored: torch.Tensor
    auxiliary: torch.Tensor | None = None
    auxiliary_mirrored: torch.Tensor | None = None


@dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities and ranges of the symmetry-preserving augmentations."""

    mirror_probability: float = 0.5
    rotation_probability: float = 0.2
    rotation_degrees: float = 15.0
    scale_probability: float = 0.2
    scale_range: tuple[float, float] = (0.85, 1.15)
    intensity_probability: float = 0.15
    brightness_range: tuple[float, float] = (0.9, 1.1)
    contrast_range: tuple[float, float] = (0.75, 1.25)
    gamma_range: tuple[float, float] = (0.7, 1.5)


class PatchSampler:
    """Draw random patch pairs from prepared cases.

    Parameters
    ----------
    cases
        Prepared cases; ``image`` must already be normalised float32. Either all or none
        have an auxiliary mask.
    patch_size
        ``(D, H, W)`` patch size in voxels.
    foreground_fraction
        Fraction of each batch whose patch is centred on a random tumour voxel.
    rng
        Random generator.
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        patch_size: Sequence[int],
        foreground_fraction: float,
        rng: np.random.Generator,
    ) -> None:
        if not cases:
            raise ValueError("the patch sampler needs at least one case")
        with_auxiliary = [case.auxiliary is not None for case in cases]
        if any(with_auxiliary) and not all(with_auxiliary):
            missing = [case.case_id for case in cases if case.auxiliary is None]
            raise ValueError(f"cases {missing} have no auxiliary mask, but others have one")
        self.has_auxiliary = all(with_auxiliary)
        self.patch = [int(p) for p in patch_size]
        self.foreground_fraction = foreground_fraction
        self.rng = rng
        self.volumes = []
        for case in cases:
            image = self._pad(case.image_hu.astype(np.float32), fill=float(case.image_hu.min()))
            mask = self._pad(case.mask, fill=0)
            auxiliary = None if case.auxiliary is None else self._pad(case.auxiliary, fill=0)
            foreground = np.argwhere(mask > 0)
            self.volumes.append((image, mask, auxiliary, foreground))

    def _pad(self, volume: np.ndarray, fill: float) -> np.ndarray:
        pad = [(0, max(0, p - s)) for p, s in zip(self.patch, volume.shape, strict=True)]
        extra_w = pad[2][1]
        pad[2] = (extra_w // 2, extra_w - extra_w // 2)  # equal on both sides keeps the centre plane
        return np.pad(volume, pad, constant_values=fill)

    def _start(self, shape: Sequence[int], foreground: np.ndarray, centred: bool) -> list[int]:
        if centred and len(foreground):
            centre = foreground[self.rng.integers(len(foreground))]
            starts = [int(c) - p // 2 for c, p in zip(centre, self.patch, strict=True)]
        else:
            starts = [int(self.rng.integers(0, s - p + 1)) for s, p in zip(shape, self.patch, strict=True)]
        return [min(max(0, st), s - p) for st, s, p in zip(starts, shape, self.patch, strict=True)]

    def sample(self, batch_size: int) -> PairBatch:
        """Return one batch of patch pairs (before augmentation)."""
        foreground_count = math.ceil(batch_size * self.foreground_fraction)
        images, mirrored_images, masks, mirrored_masks = [], [], [], []
        auxiliaries, mirrored_auxiliaries = [], []
        for index in range(batch_size):
            image, mask, auxiliary, foreground = self.volumes[int(self.rng.integers(len(self.volumes)))]
            start = self._start(image.shape, foreground, index >= batch_size - foreground_count)
            region = tuple(slice(s, s + p) for s, p in zip(start, self.patch, strict=True))
            images.append(image[region])
            masks.append(mask[region])
            # The same index range of the mirrored volume: voxel v shows the mirror of v.
            mirrored_images.append(image[..., ::-1][region])
            mirrored_masks.append(mask[..., ::-1][region])
            if auxiliary is not None:
                auxiliaries.append(auxiliary[region])
                mirrored_auxiliaries.append(auxiliary[..., ::-1][region])

        def stack(arrays: list[np.ndarray]) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(np.stack(arrays)[:, None], dtype=np.float32))

        return PairBatch(
            stack(images),
            stack(mirrored_images),
            stack(masks),
            stack(mirrored_masks),
            stack(auxiliaries) if self.has_auxiliary else None,
            stack(mirrored_auxiliaries) if self.has_auxiliary else None,
        )


def _spatial_grid(
    batch: int, shape: Sequence[int], config: AugmentationConfig, rng: np.random.Generator
) -> torch.Tensor | None:
    """Return a sampling grid for rotation about W and scaling in D-H, or None for identity."""
    matrices = []
    changed = False
    for _ in range(batch):
        matrix = np.eye(3)
        if rng.random() < config.rotation_probability:
            angle = math.radians(rng.uniform(-config.rotation_degrees, config.rotation_degrees))
            # affine_grid orders coordinates (x, y, z) = (W, H, D); rotate in the (H, D) plane.
            rotation = np.array(
                [[1, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]]
            )
            matrix = rotation @ matrix
            changed = True
        if rng.random() < config.scale_probability:
            factor = rng.uniform(*config.scale_range)
            matrix = np.diag([1.0, 1 / factor, 1 / factor]) @ matrix
            changed = True
        matrices.append(np.concatenate([matrix, np.zeros((3, 1))], axis=1))
    if not changed:
        return None
    theta = torch.tensor(np.stack(matrices), dtype=torch.float32)
    return F.affine_grid(theta, [batch, 1, *shape], align_corners=False)


def augment(batch: PairBatch, config: AugmentationConfig, rng: np.random.Generator) -> PairBatch:
    """Apply the symmetry-preserving augmentations to both branches alike.

    The auxiliary masks, when present, get the same mirror swap and spatial transform as
    the tumour masks.
    """
    image, image_m, mask, mask_m = batch.image, batch.image_mirrored, batch.mask, batch.mask_mirrored
    n = image.shape[0]
    # All binary masks of a pair travel together as channels: tumour, tumour mirrored,
    # then auxiliary and auxiliary mirrored when present.
    labels = [mask, mask_m]
    if batch.auxiliary is not None and batch.auxiliary_mirrored is not None:
        labels += [batch.auxiliary, batch.auxiliary_mirrored]
    label_stack = torch.cat(labels, dim=1)

    swap = torch.tensor(rng.random(n) < config.mirror_probability).view(n, 1, 1, 1, 1)
    image, image_m = torch.where(swap, image_m, image), torch.where(swap, image, image_m)
    # Swapping the branches swaps each mask with its mirror: channel order 1, 0, 3, 2.
    swapped_order = [i ^ 1 for i in range(label_stack.shape[1])]
    label_stack = torch.where(swap, label_stack[:, swapped_order], label_stack)

    grid = _spatial_grid(n, image.shape[2:], config, rng)
    if grid is not None:
        # The transform leaves W untouched, so it maps the mirror pair to a mirror pair.
        fill = image.amin(dim=(1, 2, 3, 4), keepdim=True)
        stacked = torch.cat([image - fill, image_m - fill], dim=1)
        stacked = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        image, image_m = stacked[:, :1] + fill, stacked[:, 1:] + fill
        label_stack = F.grid_sample(label_stack, grid, mode="bilinear", align_corners=False)
        label_stack = (label_stack >= 0.5).float()
    mask, mask_m = label_stack[:, 0:1], label_stack[:, 1:2]
    auxiliary = auxiliary_m = None
    if label_stack.shape[1] == 4:
        auxiliary, auxiliary_m = label_stack[:, 2:3].contiguous(), label_stack[:, 3:4].contiguous()

    for i in range(n):
        if rng.random() >= config.intensity_probability:
            continue
        brightness = rng.uniform(*config.brightness_range)
        contrast = rng.uniform(*config.contrast_range)
        gamma = rng.uniform(*config.gamma_range)
        pair = torch.stack([image[i], image_m[i]])
        mean = pair.mean()
        pair = (pair - mean) * contrast + mean
        low, high = pair.min(), pair.max()
        span = torch.clamp(high - low, min=1e-6)
        pair = ((pair - low) / span) ** gamma * span + low
        pair = pair * brightness
        image[i], image_m[i] = pair[0], pair[1]
    return PairBatch(
        image.contiguous(), image_m.contiguous(), mask.contiguous(), mask_m.contiguous(), auxiliary, auxiliary_m
    )

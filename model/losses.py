"""Segmentation losses, the asymmetry mask and the SATs margin loss.

Tensors are ``(N, C, D, H, W)`` with W the left-right axis of the symmetric frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.geometry import LR_AXIS


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    return mask > 0.5 if mask.is_floating_point() else mask.bool()


def asymmetry_mask(mask: torch.Tensor, mirrored: torch.Tensor | None = None) -> torch.Tensor:
    """Return m = s - (s AND s'), the tumour voxels whose mirror voxel is not tumour.

    Parameters
    ----------
    mask
        Binary tumour mask ``s``, ``(N, 1, D, H, W)`` of any numeric or bool dtype, in the
        symmetric frame so that flipping W mirrors across the mid-sagittal plane.
    mirrored
        The mirrored mask ``s'`` on the same voxels: the same index range cut from the
        flipped label volume. When omitted, ``s'`` is ``mask`` flipped along W, which is
        the mirror image only if ``mask`` spans the full width of the volume (or a W range
        symmetric about the centre plane).

    Returns
    -------
    torch.Tensor
        Float tensor of the same shape with values 0 and 1.
    """
    s = _as_bool(mask)
    s_mirror = torch.flip(s, dims=(LR_AXIS,)) if mirrored is None else _as_bool(mirrored)
    if s_mirror.shape != s.shape:
        raise ValueError(f"mask shapes differ: {tuple(s.shape)} vs {tuple(s_mirror.shape)}")
    return (s & ~s_mirror).float()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Return 1 - soft Dice, computed per sample over all voxels and averaged over the batch.

    A sample without tumour and without predicted tumour scores a Dice of 1 (loss 0)
    thanks to ``smooth``.
    """
    probabilities = torch.sigmoid(logits.float())
    target = target.float()
    dims = tuple(range(1, logits.ndim))
    intersection = (probabilities * target).sum(dims)
    total = probabilities.sum(dims) + target.sum(dims)
    dice = (2 * intersection + smooth) / (total + smooth)
    return 1 - dice.mean()


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, bce_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Return soft Dice loss + binary cross-entropy (with logits), both means.

    ``bce_weight``, shaped like ``target``, multiplies each voxel's cross-entropy before the
    mean over all voxels. The Dice term is unweighted.
    """
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), weight=bce_weight)
    return soft_dice_loss(logits, target) + bce


def margin_loss(
    embedding: torch.Tensor,
    embedding_flipped: torch.Tensor,
    asymmetry: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """Voxel-wise contrastive margin loss between the two Siamese branches.

    With d = ||E(v) - E'(v)||_2 the Euclidean distance over channels at voxel v,

        L = mean_v [ (1 - m(v)) * d(v)^2 + m(v) * max(0, t - d(v))^2 ]

    so symmetric voxels (m = 0) pull the embeddings together and asymmetric tumour
    voxels (m = 1) push them at least ``t`` apart. This follows the text of the SATs
    paper. Its printed formula puts the two indicator terms the other way round, which
    would pull tumour voxels together, so it is taken to be a typo.

    Parameters
    ----------
    embedding, embedding_flipped
        ``(N, C, D, H, W)`` embeddings of the volume and of its mirror image, both indexed
        by the same voxel grid (see :class:`model.network.SiameseOutput`).
    asymmetry
        ``(N, 1, D, H, W)`` asymmetry mask from :func:`asymmetry_mask`.
    margin
        Hinge margin t in embedding units. Unit-normalised embeddings are at most 2
        apart, so any t >= 2 never saturates and acts as a constant push.
    """
    if embedding.shape != embedding_flipped.shape:
        raise ValueError(f"embedding shapes differ: {tuple(embedding.shape)} vs {tuple(embedding_flipped.shape)}")
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin!r}")
    distance = torch.linalg.vector_norm(embedding.float() - embedding_flipped.float(), dim=1, keepdim=True)
    m = asymmetry.float()
    pull = (1 - m) * distance.pow(2)
    push = m * torch.clamp(margin - distance, min=0).pow(2)
    return (pull + push).mean()


@dataclass
class LossTerms:
    """Loss components of one step (detached floats for logging) and the total to backpropagate."""

    total: torch.Tensor
    segmentation: float
    margin: float

import math

import pytest
import torch

from model.losses import asymmetry_mask, margin_loss, segmentation_loss, soft_dice_loss


def as_volume(row):
    return torch.tensor(row, dtype=torch.float32).view(1, 1, 1, 1, -1)


def test_asymmetry_mask_one_sided_tumour():
    s = as_volume([1, 1, 0, 0, 0, 0])
    assert asymmetry_mask(s).flatten().tolist() == [1, 1, 0, 0, 0, 0]


def test_asymmetry_mask_symmetric_part_removed():
    # Columns 0 and 5 mirror each other, so do 1 and 4.
    s = as_volume([1, 1, 1, 0, 0, 1])
    assert asymmetry_mask(s).flatten().tolist() == [0, 1, 1, 0, 0, 0]


def test_asymmetry_mask_with_explicit_mirror():
    s = as_volume([1, 1, 0])
    mirrored = as_volume([0, 1, 1])
    assert asymmetry_mask(s, mirrored).flatten().tolist() == [1, 0, 0]


def test_margin_loss_hand_computed():
    # Two voxels, 2 channels. Voxel 0 symmetric (m=0), voxel 1 asymmetric (m=1).
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).T.reshape(1, 2, 1, 1, 2)
    e_flipped = torch.tensor([[0.6, 0.8], [0.0, 1.0]]).T.reshape(1, 2, 1, 1, 2)
    m = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 1, 2)
    d0 = math.dist((1.0, 0.0), (0.6, 0.8))  # sqrt(0.8)
    d1 = math.dist((1.0, 0.0), (0.0, 1.0))  # sqrt(2)
    t = 2.0
    expected = (d0**2 + (t - d1) ** 2) / 2
    assert margin_loss(e, e_flipped, m, margin=t).item() == pytest.approx(expected, rel=1e-6)


def test_margin_loss_saturates_beyond_margin():
    e = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1, 1)
    e_flipped = torch.tensor([-1.0, 0.0]).reshape(1, 2, 1, 1, 1)  # distance 2
    m = torch.ones(1, 1, 1, 1, 1)
    assert margin_loss(e, e_flipped, m, margin=1.5).item() == 0.0


def test_margin_loss_pull_term_zero_when_equal():
    e = torch.nn.functional.normalize(torch.randn(1, 16, 2, 3, 4), dim=1)
    assert margin_loss(e, e.clone(), torch.zeros(1, 1, 2, 3, 4), margin=1.0).item() == 0.0


def test_margin_loss_rejects_bad_margin():
    e = torch.zeros(1, 2, 1, 1, 1)
    with pytest.raises(ValueError, match="margin must be positive"):
        margin_loss(e, e, torch.zeros(1, 1, 1, 1, 1), margin=0.0)


def test_dice_loss_perfect_prediction_near_zero():
    target = as_volume([1, 0, 1, 0])
    logits = (target * 2 - 1) * 50
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_loss_empty_target_and_prediction_zero():
    target = torch.zeros(1, 1, 1, 1, 4)
    assert soft_dice_loss(torch.full_like(target, -50.0), target).item() == pytest.approx(0.0, abs=1e-4)


def test_segmentation_loss_sums_dice_and_bce():
    target = as_volume([1, 0])
    logits = torch.zeros_like(target)  # p = 0.5 everywhere
    dice = 1 - (2 * 0.5 + 1e-5) / (1.0 + 1.0 + 1e-5)
    bce = math.log(2)
    assert segmentation_loss(logits, target).item() == pytest.approx(dice + bce, rel=1e-5)


def test_loss_weights_voxel_cross_entropy():
    target = as_volume([1, 0, 0, 0])
    logits = torch.zeros_like(target)  # every voxel costs log 2 of cross-entropy
    weight = as_volume([1, 4, 1, 1])
    dice = 1 - (2 * 0.5 + 1e-5) / (2.0 + 1.0 + 1e-5)
    bce = math.log(2) * (1 + 4 + 1 + 1) / 4  # the mean runs over voxels, not over weights
    assert segmentation_loss(logits, target, weight).item() == pytest.approx(dice + bce, rel=1e-5)

import numpy as np
import pytest
import torch

from model.data import PreparedCase
from model.sampling import AugmentationConfig, PairBatch, PatchSampler, augment


def make_case(width=12):
    image = np.arange(4 * 6 * width, dtype=np.float32).reshape(4, 6, width)
    mask = np.zeros_like(image, dtype=np.uint8)
    mask[1:3, 2:4, 1:3] = 1  # one-sided tumour near the right edge of the array
    return PreparedCase("c", image, mask)


def test_mirrored_patch_shows_mirror_voxel_at_same_index():
    case = make_case(width=12)
    sampler = PatchSampler([case], (4, 6, 6), foreground_fraction=0.0, rng=np.random.default_rng(3))
    for _ in range(20):
        batch = sampler.sample(1)
        image = batch.image[0, 0].numpy()
        mirrored = batch.image_mirrored[0, 0].numpy()
        # Find where the patch was cut by matching its first voxel in the volume.
        d, h, w = (int(v[0]) for v in np.nonzero(case.image_hu == image[0, 0, 0]))
        for k in range(6):
            column = w + k
            assert mirrored[0, 0, k] == case.image_hu[d, h, 11 - column]


def test_sampler_pads_narrow_volume_symmetrically():
    case = make_case(width=4)
    sampler = PatchSampler([case], (4, 6, 8), foreground_fraction=0.0, rng=np.random.default_rng(0))
    padded_image, _, _, _ = sampler.volumes[0]
    assert padded_image.shape == (4, 6, 8)
    # Two columns of padding on each side: the original centre plane stays the centre.
    assert np.array_equal(padded_image[..., 2:6], case.image_hu)


def test_foreground_patches_contain_tumour():
    case = make_case(width=24)
    sampler = PatchSampler([case], (4, 6, 6), foreground_fraction=1.0, rng=np.random.default_rng(1))
    for _ in range(10):
        assert sampler.sample(2).mask.sum() > 0


def test_augmentation_keeps_mirror_pair():
    half = torch.randn(2, 1, 8, 16, 8, generator=torch.Generator().manual_seed(0))
    image = torch.cat([half, torch.flip(half, dims=(-1,))], dim=-1)
    image[..., 0:2, 0:2, 1] += 3.0  # break the symmetry on one side

    batch = PairBatch(image, torch.flip(image, dims=(-1,)), torch.zeros_like(image), torch.zeros_like(image))
    config = AugmentationConfig(rotation_probability=1.0, scale_probability=1.0, intensity_probability=1.0)
    out = augment(batch, config, np.random.default_rng(0))
    # Bilinear sampling on the mirrored grid and the gamma change round differently in
    # float32, by up to about 1e-4 here. A broken mirror pair differs by about 1 or more.
    assert torch.allclose(out.image_mirrored, torch.flip(out.image, dims=(-1,)), atol=1e-3)


def make_auxiliary_case(width=12):
    case = make_case(width)
    auxiliary = np.zeros_like(case.mask)
    auxiliary[1:3, 2:4, width - 4 : width - 2] = 1  # on the other side from the tumour
    return PreparedCase("a", case.image_hu, case.mask, auxiliary=auxiliary)


def test_sampler_cuts_auxiliary_like_mask():
    case = make_auxiliary_case(width=12)
    sampler = PatchSampler([case], (4, 6, 12), foreground_fraction=1.0, rng=np.random.default_rng(2))
    batch = sampler.sample(2)
    assert batch.auxiliary is not None
    assert batch.auxiliary_mirrored is not None
    expected = torch.from_numpy(case.auxiliary.astype(np.float32))
    assert torch.equal(batch.auxiliary[0, 0], expected)
    assert torch.equal(batch.auxiliary_mirrored[0, 0], torch.flip(expected, dims=(-1,)))


def test_sampler_without_auxiliary_gives_none():
    batch = PatchSampler([make_case()], (4, 6, 6), 0.0, np.random.default_rng(0)).sample(1)
    assert batch.auxiliary is None
    assert batch.auxiliary_mirrored is None


def test_sampler_rejects_mixed_auxiliary():
    with pytest.raises(ValueError, match="no auxiliary mask"):
        PatchSampler([make_auxiliary_case(), make_case()], (4, 6, 6), 0.0, np.random.default_rng(0))


def test_augmentation_moves_auxiliary_with_mask():
    # The auxiliary mask equals the tumour mask, so every transform must keep them equal,
    # and each must stay the mirror image of its partner.
    mask = torch.zeros(4, 1, 8, 16, 16)
    mask[:, :, 2:6, 4:12, 2:7] = 1.0
    image = torch.randn(4, 1, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    mirrored_mask = torch.flip(mask, dims=(-1,))
    batch = PairBatch(image, torch.flip(image, dims=(-1,)), mask, mirrored_mask, mask.clone(), mirrored_mask.clone())
    config = AugmentationConfig(mirror_probability=0.5, rotation_probability=1.0, scale_probability=1.0)
    out = augment(batch, config, np.random.default_rng(4))
    assert out.auxiliary is not None
    assert out.auxiliary_mirrored is not None
    assert torch.equal(out.auxiliary, out.mask)
    assert torch.equal(out.auxiliary_mirrored, out.mask_mirrored)
    assert torch.equal(out.mask_mirrored, torch.flip(out.mask, dims=(-1,)))


def test_augmentation_swaps_auxiliary_with_branches():
    mask = torch.zeros(1, 1, 4, 8, 8)
    mask[..., 0:2] = 1.0  # tumour on one side
    auxiliary = torch.zeros_like(mask)
    auxiliary[..., 3:5] = 1.0  # auxiliary structure across the centre
    auxiliary[..., 0, 0, 0] = 1.0  # and one asymmetric voxel
    image = torch.zeros_like(mask)
    batch = PairBatch(
        image, image.clone(), mask, torch.flip(mask, dims=(-1,)), auxiliary, torch.flip(auxiliary, dims=(-1,))
    )
    config = AugmentationConfig(
        mirror_probability=1.0, rotation_probability=0.0, scale_probability=0.0, intensity_probability=0.0
    )
    out = augment(batch, config, np.random.default_rng(0))
    assert torch.equal(out.mask, torch.flip(mask, dims=(-1,)))
    assert torch.equal(out.auxiliary, torch.flip(auxiliary, dims=(-1,)))
    assert torch.equal(out.auxiliary_mirrored, auxiliary)

import numpy as np
import torch

from model.data import PreparedCase
from model.sampling import AugmentationConfig, PatchSampler, augment


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
    padded_image, _, _ = sampler.volumes[0]
    assert padded_image.shape == (4, 6, 8)
    # Two columns of padding on each side: the original centre plane stays the centre.
    assert np.array_equal(padded_image[..., 2:6], case.image_hu)


def test_foreground_patches_contain_tumour():
    case = make_case(width=24)
    sampler = PatchSampler([case], (4, 6, 6), foreground_fraction=1.0, rng=np.random.default_rng(1))
    for _ in range(10):
        assert sampler.sample(2).mask.sum() > 0


def test_augmentation_keeps_mirror_pair():
    half = torch.randn(2, 1, 8, 16, 8)
    image = torch.cat([half, torch.flip(half, dims=(-1,))], dim=-1)
    image[..., 0:2, 0:2, 1] += 3.0  # break the symmetry on one side
    from model.sampling import PairBatch

    batch = PairBatch(image, torch.flip(image, dims=(-1,)), torch.zeros_like(image), torch.zeros_like(image))
    config = AugmentationConfig(rotation_probability=1.0, scale_probability=1.0, intensity_probability=1.0)
    out = augment(batch, config, np.random.default_rng(0))
    assert torch.allclose(out.image_mirrored, torch.flip(out.image, dims=(-1,)), atol=1e-5)

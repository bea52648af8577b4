import numpy as np
import pytest
import torch

from model.inference import gaussian_importance, sliding_window_probabilities, window_starts


class Threshold(torch.nn.Module):
    """Logit = 10 * (x - 0.5): probability 1 where the input is 1, 0 where it is 0."""

    def forward(self, x):
        return 10.0 * (x - 0.5)


def test_window_starts_cover_axis():
    starts = window_starts(10, 4, 0.5)
    assert starts == [0, 2, 4, 6]  # ceil((10 - 4) / 2) + 1 = 4 windows, step 2
    assert starts[0] == 0
    assert starts[-1] + 4 == 10
    assert max(np.diff(starts)) <= 2


def test_window_starts_single_window():
    assert window_starts(4, 4, 0.5) == [0]


def test_gaussian_peak_at_centre():
    weights = gaussian_importance((5, 5, 5))
    assert weights[2, 2, 2] == 1.0
    assert weights.min() > 0


def test_sliding_window_reproduces_pointwise_network():
    volume = np.zeros((10, 13, 9), dtype=np.float32)
    volume[2:7, 3:9, 1:5] = 1.0
    probabilities = sliding_window_probabilities(Threshold(), volume, (4, 8, 8), mixed_precision=False)
    assert probabilities.shape == volume.shape
    assert np.array_equal(probabilities > 0.5, volume > 0.5)


def test_sliding_window_mirror_tta_keeps_pointwise_result():
    volume = np.zeros((8, 8, 8), dtype=np.float32)
    volume[:, :, :3] = 1.0
    probabilities = sliding_window_probabilities(Threshold(), volume, (8, 8, 8), mirror=True, mixed_precision=False)
    assert np.array_equal(probabilities > 0.5, volume > 0.5)


def test_sliding_window_rejects_2d():
    with pytest.raises(ValueError, match="expected a"):
        sliding_window_probabilities(Threshold(), np.zeros((4, 4)), (4, 4, 4))

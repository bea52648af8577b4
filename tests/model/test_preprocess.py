import numpy as np
import pytest

from model.errors import InputError
from model.preprocess import IntensityNormalization, body_crop


def test_body_crop_keeps_centre_plane():
    volume = np.full((10, 12, 20), -1024.0, dtype=np.float32)
    volume[2:8, 3:9, 12:16] = 40.0  # body off to one side: columns 12..15
    box = body_crop(volume, margin=1)
    assert box.d == (1, 9)
    assert box.h == (2, 10)
    start, stop = box.w
    assert start + stop == 20  # symmetric about the centre plane at column 9.5
    assert stop == 17  # farthest body column 15 plus the margin, exclusive


def test_body_crop_ignores_small_islands():
    volume = np.full((10, 10, 10), -1024.0, dtype=np.float32)
    volume[2:8, 2:8, 2:8] = 40.0
    volume[0, 0, 0] = 40.0  # a single bright voxel apart from the body
    box = body_crop(volume, margin=0)
    assert box.d == (2, 8)


def test_body_crop_without_body_rejected():
    with pytest.raises(InputError, match="no body"):
        body_crop(np.full((4, 4, 4), -1024.0, dtype=np.float32))


def test_normalization_clips_and_scales():
    normalization = IntensityNormalization(lower=-100.0, upper=100.0, mean=0.0, std=50.0)
    result = normalization.apply(np.array([-500.0, 0.0, 50.0, 900.0]))
    assert result.tolist() == [-2.0, 0.0, 1.0, 2.0]


def test_normalization_from_foreground():
    values = np.linspace(-100, 100, 1001, dtype=np.float32)
    normalization = IntensityNormalization.from_foreground(values)
    assert normalization.lower == pytest.approx(-99.0)
    assert normalization.upper == pytest.approx(99.0)
    assert normalization.mean == pytest.approx(0.0, abs=1e-4)

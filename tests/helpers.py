"""Small models shared by tests that need a saved checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.checkpoint import ModelMetadata, save_model
from model.network import NetworkConfig, ResidualUNet
from model.preprocess import IntensityNormalization

#: A network small enough to build and run in milliseconds (patches divisible by 16).
TINY_NETWORK = NetworkConfig(base_features=4, max_features=8, encoder_blocks=(1, 1, 1, 1, 1))


def save_tiny_model(
    path: Path, name: str, symmetrization: str = "self", training: dict[str, Any] | None = None
) -> Path:
    """Save an untrained tiny model (4 mm voxels, 16 x 32 x 32 patches) and return ``path``."""
    torch.manual_seed(0)
    metadata = ModelMetadata(
        name=name,
        network=TINY_NETWORK,
        spacing_dhw_mm=(4.0, 4.0, 4.0),
        patch_size=(16, 32, 32),
        symmetrization=symmetrization,
        normalization=IntensityNormalization(-200.0, 300.0, 40.0, 50.0),
        training=training,
    )
    save_model(ResidualUNet(TINY_NETWORK), metadata, path)
    return path

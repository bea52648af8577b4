import json

import pytest
import torch

from model.checkpoint import ModelMetadata, load_model, save_model
from model.errors import ModelError
from model.network import NetworkConfig, ResidualUNet
from model.preprocess import IntensityNormalization

TINY = NetworkConfig(base_features=4, max_features=8, encoder_blocks=(1, 1, 1, 1, 1))


def metadata():
    return ModelMetadata(
        name="tiny",
        network=TINY,
        spacing_dhw_mm=(3.0, 4.0, 4.0),
        patch_size=(32, 32, 32),
        symmetrization="self",
        normalization=IntensityNormalization(-100.0, 200.0, 40.0, 30.0),
    )


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    network = ResidualUNet(TINY)
    path = tmp_path / "tiny.safetensors"
    save_model(network, metadata(), path)
    loaded, loaded_metadata = load_model(path)
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert loaded_metadata.network == TINY
    assert loaded_metadata.normalization.mean == 40.0
    assert len(loaded_metadata.weights_sha256) == 64
    assert "Research use only" in json.loads(path.with_suffix(".json").read_text())["intended_use"]


def test_corrupt_weights_detected(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_model(ResidualUNet(TINY), metadata(), path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256"):
        load_model(path)


def test_missing_metadata_reported(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_model(ResidualUNet(TINY), metadata(), path)
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="not found"):
        load_model(path)

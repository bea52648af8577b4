import pytest
import SimpleITK as sitk

from model.checkpoint import ModelMetadata, save_model
from model.errors import ModelError
from model.network import NetworkConfig, ResidualUNet
from model.predict import Predictor
from model.preprocess import IntensityNormalization

TINY = NetworkConfig(base_features=4, max_features=8, encoder_blocks=(1, 1, 1, 1, 1))


def atlas_model(path, atlas_sha256):
    metadata = ModelMetadata(
        name="tiny-atlas",
        network=TINY,
        spacing_dhw_mm=(4.0, 4.0, 4.0),
        patch_size=(16, 32, 32),
        symmetrization="atlas",
        normalization=IntensityNormalization(-200.0, 300.0, 40.0, 50.0),
        training={"atlas_sha256": atlas_sha256},
    )
    save_model(ResidualUNet(TINY), metadata, path)
    return path


def test_atlas_model_needs_atlas(tmp_path):
    model = atlas_model(tmp_path / "m.safetensors", None)
    with pytest.raises(ModelError, match="needs the symmetric atlas"):
        Predictor(model, atlas=tmp_path / "absent.nii.gz")


def test_wrong_atlas_rejected(tmp_path):
    atlas = tmp_path / "atlas.nii.gz"
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), str(atlas))
    model = atlas_model(tmp_path / "m.safetensors", "0" * 64)
    with pytest.raises(ModelError, match="not the one model tiny-atlas was trained with"):
        Predictor(model, atlas=atlas)

import pytest
import SimpleITK as sitk

from model.errors import ModelError
from model.predict import Predictor
from tests.helpers import save_tiny_model


def atlas_model(path, atlas_sha256):
    return save_tiny_model(path, "tiny-atlas", symmetrization="atlas", training={"atlas_sha256": atlas_sha256})


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

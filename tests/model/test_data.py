import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk

from model.data import PREPARATION_VERSION, cache_key, discover, load_case, target_definition
from model.errors import InputError


def write_volume(path, array, spacing=(1.0, 1.0, 2.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def test_nnunet_layout(tmp_path):
    label = np.zeros((4, 5, 6), dtype=np.uint8)
    label[1, 2, 3] = 1
    label[2, 2, 3] = 2
    for case in ("b", "a"):
        write_volume(tmp_path / "imagesTs" / f"{case}_0000.nii.gz", np.zeros((4, 5, 6), dtype=np.int16))
        write_volume(tmp_path / "labelsTs" / f"{case}.nii.gz", label)
    cases = discover(tmp_path, "nnunet", "Ts")
    assert [c.case_id for c in cases] == ["a", "b"]
    loaded = load_case(cases[0])
    assert sitk.GetArrayFromImage(loaded.mask).sum() == 1  # label value 1 only


def test_nnunet_missing_label_named(tmp_path):
    write_volume(tmp_path / "imagesTr" / "x_0000.nii.gz", np.zeros((2, 2, 2), dtype=np.int16))
    (tmp_path / "labelsTr").mkdir()
    with pytest.raises(InputError, match="label not found for case x"):
        discover(tmp_path, "nnunet", "Tr")


def test_segrap_layout_unites_structures(tmp_path):
    images = tmp_path / "SegRap2023_Training_Set_120cases" / "segrap_0001"
    labels = tmp_path / "SegRap2023_Training_Set_120cases_OneHot_Labels" / "Task002" / "segrap_0001"
    write_volume(images / "image.nii.gz", np.zeros((3, 3, 3), dtype=np.int16))
    gtvp = np.zeros((3, 3, 3), dtype=np.uint8)
    gtvp[0, 0, 0] = 1
    gtvnd = np.zeros((3, 3, 3), dtype=np.uint8)
    gtvnd[2, 2, 2] = 1
    write_volume(labels / "GTVp.nii.gz", gtvp)
    write_volume(labels / "GTVnd.nii.gz", gtvnd)
    cases = discover(tmp_path, "segrap", "")
    assert [c.case_id for c in cases] == ["segrap_0001"]
    assert sitk.GetArrayFromImage(load_case(cases[0]).mask).sum() == 2


def test_openkbp_layout_label_value(tmp_path):
    structures = np.zeros((3, 3, 3), dtype=np.uint8)
    structures[0] = 10
    structures[1] = 9
    write_volume(tmp_path / "train" / "pt_1" / "ct.nii.gz", np.zeros((3, 3, 3), dtype=np.int16))
    write_volume(tmp_path / "train" / "pt_1" / "structures.nii.gz", structures)
    case = discover(tmp_path, "openkbp", "train")[0]
    assert case.label_value == 10
    assert sitk.GetArrayFromImage(load_case(case).mask).sum() == 9


def write_openkbp_case(root):
    structures = np.zeros((3, 3, 3), dtype=np.uint8)
    structures[0] = 10
    structures[1] = 9
    structures[2, 0] = 8
    write_volume(root / "train" / "pt_1" / "ct.nii.gz", np.zeros((3, 3, 3), dtype=np.int16))
    write_volume(root / "train" / "pt_1" / "structures.nii.gz", structures)


def test_openkbp_auxiliary_unites_values(tmp_path):
    write_openkbp_case(tmp_path)
    case = discover(tmp_path, "openkbp", "train", auxiliary_values=(8, 9))[0]
    loaded = load_case(case)
    assert case.auxiliary_values == (8, 9)
    assert loaded.auxiliary is not None
    assert sitk.GetArrayFromImage(loaded.mask).sum() == 9
    assert sitk.GetArrayFromImage(loaded.auxiliary).sum() == 9 + 3
    assert loaded.auxiliary.GetSpacing() == loaded.ct.GetSpacing()


def test_no_auxiliary_by_default(tmp_path):
    write_openkbp_case(tmp_path)
    assert load_case(discover(tmp_path, "openkbp", "train")[0]).auxiliary is None


def test_auxiliary_with_tumour_value_rejected(tmp_path):
    write_openkbp_case(tmp_path)
    with pytest.raises(InputError, match="include the tumour's label value 10"):
        discover(tmp_path, "openkbp", "train", auxiliary_values=(9, 10))


def test_auxiliary_for_segrap_rejected(tmp_path):
    with pytest.raises(InputError, match="need a label-map layout"):
        discover(tmp_path, "segrap", "", auxiliary_values=(2,))


def test_cache_key_unchanged_without_auxiliary(tmp_path):
    write_openkbp_case(tmp_path)
    case = discover(tmp_path, "openkbp", "train")[0]
    # The key that code without auxiliary masks computed, so caches made before stay valid.
    earlier = json.dumps(
        {
            "files": [str(case.image), str(case.labels[0])],
            "label": 10,
            "spacing": [3.0, 4.0, 4.0],
            "mode": "atlas",
            "atlas": "abc",
            "version": PREPARATION_VERSION,
        },
        sort_keys=True,
    )
    assert cache_key(case, (3, 4, 4), "atlas", "abc") == hashlib.sha256(earlier.encode()).hexdigest()[:16]
    with_auxiliary = discover(tmp_path, "openkbp", "train", auxiliary_values=(8, 9))[0]
    assert cache_key(with_auxiliary, (3, 4, 4), "atlas", "abc") != cache_key(case, (3, 4, 4), "atlas", "abc")


def test_target_definition_resolves_layout_defaults():
    assert target_definition("openkbp", None, ("GTVp",)) == {"label_value": 10}
    assert target_definition("nnunet", None, ("GTVp",)) == {"label_value": 1}
    assert target_definition("nnunet", 3, ("GTVp",)) == {"label_value": 3}
    assert target_definition("segrap", None, ("GTVp", "GTVnd")) == {"structures": ["GTVp", "GTVnd"]}


def test_grid_mismatch_rejected(tmp_path):
    write_volume(tmp_path / "imagesTr" / "x_0000.nii.gz", np.zeros((2, 2, 2), dtype=np.int16))
    write_volume(tmp_path / "labelsTr" / "x.nii.gz", np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="differs from the CT grid"):
        load_case(discover(tmp_path, "nnunet", "Tr")[0])


def test_unknown_layout_rejected(tmp_path):
    with pytest.raises(InputError, match="'msd'"):
        discover(tmp_path, "msd", "Tr")

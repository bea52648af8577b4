"""Series reader on copies of the real pyCERR and GE CTs, edited to show each rule."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from model.errors import InputError
from tests.conftest import shared_path
from worker.inputs import input_folder
from worker.series import read_ct_series

pytestmark = pytest.mark.shared_data


def _pycerr_files() -> list[Path]:
    return sorted(shared_path("hn-ct-pycerr").glob("IMG_*.dcm"))


def _link_series(folder: Path, skip: set[int] = frozenset()) -> list[Path]:  # type: ignore[assignment]
    """Symlink the pyCERR slices into ``folder`` (except indices in ``skip``); return the links."""
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for index, source in enumerate(_pycerr_files()):
        if index in skip:
            continue
        link = folder / source.name
        link.symlink_to(source)
        links.append(link)
    return links


def _edit(folder: Path, index: int) -> tuple[pydicom.Dataset, Path]:
    """Return a copy of slice ``index`` and the link it replaces when saved with :func:`_replace`."""
    source = _pycerr_files()[index]
    return pydicom.dcmread(source), folder / source.name


def _replace(dataset: pydicom.Dataset, target: Path, **options: bool) -> None:
    target.unlink()
    dataset.save_as(target, **options)


def test_pycerr_matches_simpleitk(pycerr_ct):
    ct = read_ct_series(shared_path("hn-ct-pycerr"))
    assert ct.image.GetSize() == (511, 511, 90)
    assert ct.image.GetSpacing() == (1.0, 1.0, 3.0)
    assert ct.image.GetOrigin() == pycerr_ct.GetOrigin()
    assert np.array_equal(ct.hu, sitk.GetArrayViewFromImage(pycerr_ct))
    z = [float(d.ImagePositionPatient[2]) for d in ct.datasets]
    assert z == sorted(z)
    assert "PixelData" not in ct.datasets[0]


def test_bits_stored_per_slice_kept():
    ct = read_ct_series(shared_path("hn-ct-pycerr"))
    # Six slices have BitsStored 13 with raw values up to 4868 (HU 3844); masking to 12 bits would wrap them.
    assert float(ct.hu.max()) == 3844.0


def test_shuffled_names_and_instance_numbers(tmp_path):
    folder = tmp_path / "ct"
    folder.mkdir()
    files = _pycerr_files()
    rng = np.random.default_rng(1)
    for new_index, old_index in enumerate(rng.permutation(len(files))):
        dataset = pydicom.dcmread(files[old_index])
        dataset.InstanceNumber = new_index + 1  # contradicts the positions
        dataset.SliceLocation = float(new_index)
        dataset.save_as(folder / f"{new_index:03d}.dcm")
    ct = read_ct_series(folder)
    reference = read_ct_series(shared_path("hn-ct-pycerr"))
    assert np.array_equal(ct.hu, reference.hu)
    assert [d.SOPInstanceUID for d in ct.datasets] == [d.SOPInstanceUID for d in reference.datasets]


def test_missing_slice_names_z_range(tmp_path):
    _link_series(tmp_path, skip={40})
    with pytest.raises(InputError) as error:
        read_ct_series(tmp_path)
    assert error.value.code == "series.missing_slices"
    assert "z = -123.00 mm and z = -117.00 mm" in str(error.value)


def test_nonuniform_spacing_rejected(tmp_path):
    _link_series(tmp_path)
    dataset, target = _edit(tmp_path, 50)
    position = [float(v) for v in dataset.ImagePositionPatient]
    dataset.ImagePositionPatient = [position[0], position[1], position[2] + 1.0]
    _replace(dataset, target)
    with pytest.raises(InputError) as error:
        read_ct_series(tmp_path)
    assert error.value.code == "series.nonuniform_spacing"
    assert "-150.00" in str(error.value) or "-149.00" in str(error.value)


def test_exact_duplicate_dropped(tmp_path):
    _link_series(tmp_path)
    shutil.copy(_pycerr_files()[10], tmp_path / "copy-of-10.dcm")
    ct = read_ct_series(tmp_path)
    assert ct.slice_count == 90
    codes = [w.code for w in ct.warnings]
    assert "series.duplicate_dropped" in codes


def test_different_images_at_one_position_rejected(tmp_path):
    _link_series(tmp_path)
    dataset, _ = _edit(tmp_path, 10)
    dataset.SOPInstanceUID = generate_uid()
    pixels = dataset.pixel_array.copy()
    pixels[100, 100] += 50
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(tmp_path / "other-at-10.dcm")
    with pytest.raises(InputError) as error:
        read_ct_series(tmp_path)
    assert error.value.code == "series.conflicting_slices"
    assert dataset.SOPInstanceUID in str(error.value)


def test_localizer_excluded_with_uid(tmp_path):
    _link_series(tmp_path)
    dataset, _ = _edit(tmp_path, 0)
    dataset.SOPInstanceUID = generate_uid()
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    dataset.save_as(tmp_path / "scout.dcm")
    ct = read_ct_series(tmp_path)
    assert ct.slice_count == 90
    localizer = [w for w in ct.warnings if w.code == "file.localizer"]
    assert [w.sop_instance_uid for w in localizer] == [dataset.SOPInstanceUID]


def test_two_series_largest_chosen(tmp_path):
    _link_series(tmp_path / "a")
    (tmp_path / "b").mkdir()
    other_uid = generate_uid()
    for source in _pycerr_files()[:20]:
        dataset = pydicom.dcmread(source)
        dataset.SeriesInstanceUID = other_uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.save_as(tmp_path / "b" / source.name)
    ct = read_ct_series(tmp_path)
    assert ct.slice_count == 90
    assert ct.series_instance_uid != other_uid
    assert any(w.code == "series.ignored" and other_uid in w.message for w in ct.warnings)
    explicit = read_ct_series(tmp_path, series_uid=other_uid)
    assert explicit.slice_count == 20


def test_equal_series_ambiguous_lists_both(tmp_path):
    _link_series(tmp_path / "a")
    (tmp_path / "b").mkdir()
    other_uid = generate_uid()
    for source in _pycerr_files():
        dataset = pydicom.dcmread(source)
        dataset.SeriesInstanceUID = other_uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.save_as(tmp_path / "b" / source.name)
    with pytest.raises(InputError) as error:
        read_ct_series(tmp_path)
    assert error.value.code == "series.ambiguous"
    assert other_uid in str(error.value)


def test_unknown_series_uid_lists_candidates(tmp_path):
    _link_series(tmp_path)
    with pytest.raises(InputError) as error:
        read_ct_series(tmp_path, series_uid="1.2.3.4")
    assert error.value.code == "series.not_found"
    assert "90 images" in str(error.value)


def test_inconsistent_orientation_rejected(tmp_path):
    _link_series(tmp_path)
    dataset, target = _edit(tmp_path, 30)
    dataset.ImageOrientationPatient = [0.9962, 0.0872, 0, -0.0872, 0.9962, 0]
    _replace(dataset, target)
    with pytest.raises(InputError) as error:
        read_ct_series(tmp_path)
    assert error.value.code == "series.inconsistent_orientation"


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_missing_geometry_tag_named(tmp_path, keyword):
    _link_series(tmp_path)
    dataset, target = _edit(tmp_path, 5)
    delattr(dataset, keyword)
    _replace(dataset, target)
    with pytest.raises(InputError) as error:
        read_ct_series(tmp_path)
    assert error.value.code == "series.missing_tag"
    assert keyword in str(error.value)
    assert dataset.SOPInstanceUID in str(error.value)


def test_non_ct_rejected_with_modality(tmp_path):
    for source in _pycerr_files()[:10]:
        dataset = pydicom.dcmread(source)
        dataset.Modality = "MR"
        dataset.save_as(tmp_path / source.name)
    with pytest.raises(InputError) as error:
        read_ct_series(tmp_path)
    assert error.value.code == "series.not_ct"
    assert "MR" in str(error.value)


def test_unsupported_transfer_syntax_named(tmp_path):
    _link_series(tmp_path)
    dataset, target = _edit(tmp_path, 3)
    dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    dataset.PixelData = encapsulate([b"\x00" * 16])
    _replace(dataset, target, implicit_vr=False, little_endian=True)
    with pytest.raises(InputError) as error:
        read_ct_series(tmp_path)
    assert error.value.code == "series.unsupported_transfer_syntax"
    assert "1.2.840.10008.1.2.4.100" in str(error.value)


def test_truncated_slice_rejected(tmp_path):
    _link_series(tmp_path)
    source = _pycerr_files()[60]
    target = tmp_path / source.name
    target.unlink()
    target.write_bytes(source.read_bytes()[: source.stat().st_size - 1000])
    with pytest.raises(InputError) as error:
        read_ct_series(tmp_path)
    assert error.value.code == "series.unreadable_slice"


def test_junk_files_skipped_with_warning(tmp_path):
    _link_series(tmp_path)
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not DICOM\n")
    ct = read_ct_series(tmp_path)
    assert ct.slice_count == 90
    assert any(w.code == "file.not_dicom" and w.message.startswith("2 file") for w in ct.warnings)


def test_gantry_tilt_rejected_with_angle():
    with pytest.raises(InputError) as error:
        read_ct_series(shared_path("odd-gantry-tilt-head-ge"))
    assert error.value.code == "series.gantry_tilt"
    assert "18.5 degrees" in str(error.value)


def test_zip_input_read(tmp_path):
    archive = tmp_path / "ct.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for source in _pycerr_files()[:12]:
            bundle.write(source, f"study/series/{source.name}")
    with input_folder(archive) as folder:
        ct = read_ct_series(folder)
    assert ct.slice_count == 12


@pytest.mark.parametrize("name", ["../escape.dcm", "/abs/path.dcm"])
def test_zip_unsafe_entry_rejected(tmp_path, name):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(name, b"x")
    with pytest.raises(InputError) as error, input_folder(archive):
        pass
    assert error.value.code == "input.zip_unsafe"

"""Series reader on synthetic series with known voxels, pixel encodings and geometry faults."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from model.errors import InputError
from worker.series import read_ct_series
from worker.synthetic_dicom import Ball, SeriesGeometry, render_phantom, write_ct_series


def _geometry(position: str = "HFS", slices: int = 12, **options: float) -> SeriesGeometry:
    return SeriesGeometry.axial(
        position, rows=32, columns=40, slices=slices, pixel_spacing_mm=(1.0, 1.25), slice_spacing_mm=2.0, **options
    )


def _volume(geometry: SeriesGeometry) -> np.ndarray:
    return render_phantom(geometry, [Ball((0.0, 0.0, 0.0), 9.0, 300.0)], background_hu=-1000.0, noise_sd_hu=20.0)


@pytest.mark.parametrize(("bits_stored", "signed"), [(12, False), (16, False), (16, True), (12, True)])
def test_pixel_representations_exact(tmp_path, bits_stored, signed):
    geometry = _geometry()
    volume = _volume(geometry)
    intercept = -1024.0 if not signed else 0.0
    write_ct_series(volume, geometry, tmp_path, bits_stored=bits_stored, signed=signed, rescale_intercept=intercept)
    ct = read_ct_series(tmp_path)
    assert np.array_equal(ct.hu, volume.astype(np.float32))


def test_rescale_applied_per_slice(tmp_path):
    geometry = _geometry()
    volume = _volume(geometry)
    intercepts = [-1024.0 - 2.0 * k for k in range(geometry.slices)]
    write_ct_series(volume, geometry, tmp_path, rescale_intercept=intercepts, bits_stored=16)
    ct = read_ct_series(tmp_path)
    assert np.array_equal(ct.hu, volume.astype(np.float32))
    stored = [float(pydicom.dcmread(p, stop_before_pixels=True).RescaleIntercept) for p in tmp_path.iterdir()]
    assert len(set(stored)) == geometry.slices


@pytest.mark.parametrize("position", ["FFS", "HFP", "FFP", "HFDR"])
def test_reversed_instance_numbers_ignored(tmp_path, position):
    geometry = _geometry(position)
    volume = _volume(geometry)
    paths = write_ct_series(volume, geometry, tmp_path, instance_number_order="reversed", shuffle_names=True)
    ct = read_ct_series(tmp_path)
    normal = np.asarray(ct.image.GetDirection()).reshape(3, 3)[:, 2]
    assert np.all(np.diff(ct.positions_lps @ normal) > 0)
    index_of = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: k for k, p in enumerate(paths)}
    order = [index_of[d.SOPInstanceUID] for d in ct.datasets]
    assert np.array_equal(ct.hu, volume[order].astype(np.float32))


def test_synthetic_gantry_tilt_angle_named(tmp_path):
    geometry = _geometry(gantry_tilt_deg=12.0)
    write_ct_series(_volume(geometry), geometry, tmp_path)
    with pytest.raises(InputError) as error:
        read_ct_series(tmp_path)
    assert error.value.code == "series.gantry_tilt"
    assert "12.0 degrees" in str(error.value)


def test_padding_value_becomes_air(tmp_path):
    geometry = _geometry()
    volume = _volume(geometry)
    write_ct_series(volume, geometry, tmp_path, bits_stored=16, signed=True, rescale_intercept=0.0)
    for path in tmp_path.iterdir():
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array.copy()
        pixels[:4, :] = -2000
        dataset.PixelData = pixels.tobytes()
        dataset.add_new("PixelPaddingValue", "SS", -2000)
        dataset.save_as(path)
    ct = read_ct_series(tmp_path)
    assert np.all(ct.hu[:, :4, :] == -1024.0)
    assert np.array_equal(ct.hu[:, 4:, :], volume[:, 4:, :].astype(np.float32))

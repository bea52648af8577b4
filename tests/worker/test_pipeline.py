"""The main job: series in, RTSTRUCT, SEG, report and QA picture out."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from model.checkpoint import ModelMetadata, save_model
from model.network import ResidualUNet
from model.predict import Predictor
from model.preprocess import IntensityNormalization
from tests.conftest import shared_path
from tests.helpers import TINY_NETWORK
from worker.pipeline import asymmetry_score, laterality, segment_series, warm_up
from worker.synthetic_dicom import write_demo_series


def _errors(path: Path) -> list[str]:
    output = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (output.stdout + output.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def _tiny_predictor(folder: Path, threshold: float) -> Predictor:
    """An untrained tiny self-mode model whose threshold makes the mask empty (> 1) or full (< 0)."""
    metadata = ModelMetadata(
        name="tiny-test",
        network=TINY_NETWORK,
        spacing_dhw_mm=(4.0, 4.0, 4.0),
        patch_size=(16, 32, 32),
        symmetrization="self",
        normalization=IntensityNormalization(-200.0, 300.0, 40.0, 50.0),
        threshold=threshold,
    )
    path = folder / "tiny.safetensors"
    save_model(ResidualUNet(TINY_NETWORK), metadata, path)
    return Predictor(path)


@pytest.fixture(scope="module")
def demo_series(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo") / "ct"
    write_demo_series(folder)
    return folder


def test_laterality_sides():
    mask = np.zeros((2, 4, 10), dtype=np.uint8)
    mask[:, :, 6:9] = 1  # columns 5-9 are x > 0, the patient's left
    assert laterality(mask)[0] == "left"
    assert laterality(mask[..., ::-1])[0] == "right"
    mask[:, :, 1:4] = 1
    side, fraction = laterality(mask)
    assert side == "bilateral"
    assert fraction == pytest.approx(0.5)
    assert laterality(np.zeros_like(mask)) == ("none", None)


def test_asymmetry_score_values():
    mask = np.zeros((1, 1, 10), dtype=np.uint8)
    mask[0, 0, [2, 7]] = 1  # mirror pair
    assert asymmetry_score(mask) == 0.0
    mask[0, 0, 8] = 1  # no counterpart at column 1
    assert asymmetry_score(mask) == pytest.approx(1 / 3)
    assert asymmetry_score(np.zeros_like(mask)) is None


def test_empty_prediction_gives_valid_outputs(demo_series, tmp_path):
    report = segment_series(demo_series, tmp_path / "out", _tiny_predictor(tmp_path, threshold=2.0))
    assert report["result"]["empty"] is True
    assert report["result"]["gtv_volume_cc"] == 0.0
    assert report["result"]["laterality"] == "none"
    assert any(w["code"] == "result.empty" for w in report["warnings"])
    rtstruct = pydicom.dcmread(tmp_path / "out" / "rtstruct.dcm")
    assert "ContourSequence" not in rtstruct.ROIContourSequence[0]
    assert _errors(tmp_path / "out" / "rtstruct.dcm") == []
    assert _errors(tmp_path / "out" / "seg.dcm") == []


def test_full_prediction_contours_every_slice(demo_series, tmp_path):
    report = segment_series(demo_series, tmp_path / "out", _tiny_predictor(tmp_path, threshold=-1.0))
    slices = report["input"]["slice_count"]
    assert report["result"]["slices_with_tumour"] == slices
    rtstruct = pydicom.dcmread(tmp_path / "out" / "rtstruct.dcm")
    referenced = {
        item.ContourImageSequence[0].ReferencedSOPInstanceUID for item in rtstruct.ROIContourSequence[0].ContourSequence
    }
    assert len(referenced) == slices
    seg = pydicom.dcmread(tmp_path / "out" / "seg.dcm")
    assert int(seg.NumberOfFrames) == slices
    assert _errors(tmp_path / "out" / "rtstruct.dcm") == []
    assert _errors(tmp_path / "out" / "seg.dcm") == []


def test_report_fields(demo_series, tmp_path):
    report = segment_series(demo_series, tmp_path / "out", _tiny_predictor(tmp_path, threshold=2.0))
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written == report
    assert set(report["timings_s"]) == {
        "load",
        "symmetrize",
        "preprocess",
        "infer",
        "postprocess",
        "write",
        "total",
    }
    assert report["model"]["name"] == "tiny-test"
    assert len(report["model"]["weights_sha256"]) == 64
    ct = pydicom.dcmread(next(demo_series.iterdir()), stop_before_pixels=True)
    assert report["input"]["series_instance_uid"] == ct.SeriesInstanceUID
    assert (tmp_path / "out" / "qa.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.shared_data
def test_pycerr_with_shipped_model(tmp_path):
    from worker.cli_model import default_atlas, default_model

    folder = shared_path("hn-ct-pycerr")
    report = segment_series(folder, tmp_path, Predictor(default_model(), atlas=default_atlas()))
    assert report["input"]["slice_count"] == 90
    assert report["result"]["gtv_volume_cc"] > 0
    rtstruct = pydicom.dcmread(tmp_path / "rtstruct.dcm")
    ct = pydicom.dcmread(folder / "IMG_00000.dcm", stop_before_pixels=True)
    assert rtstruct.StudyInstanceUID == ct.StudyInstanceUID
    assert rtstruct.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert _errors(tmp_path / "rtstruct.dcm") == []
    assert _errors(tmp_path / "seg.dcm") == []


@pytest.mark.shared_data
def test_series_smaller_than_patch(tmp_path):
    from worker.cli_model import default_atlas, default_model

    folder = tmp_path / "ct"
    folder.mkdir()
    for source in sorted(shared_path("hn-ct-pycerr").glob("IMG_*.dcm"))[20:32]:
        (folder / source.name).symlink_to(source)
    predictor = Predictor(default_model(), atlas=default_atlas())
    depth_mm = predictor.info.patch_size[0] * predictor.info.spacing_dhw_mm[0]
    report = segment_series(folder, tmp_path / "out", predictor)
    assert report["input"]["slice_count"] * 3.0 < depth_mm
    assert report["input"]["slice_count"] == 12
    assert _errors(tmp_path / "out" / "rtstruct.dcm") == []


def test_warm_up_leaves_no_files(tmp_path, monkeypatch):
    import highdicom._standard_utils as standard  # private: only to see that its tables were loaded

    standard.get_module_attribute_map.cache_clear()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    warm_up()
    assert standard.get_module_attribute_map.cache_info().currsize == 1
    assert list(tmp_path.iterdir()) == []


def test_startup_objects_frozen():
    import gc

    from worker.pipeline import freeze_startup_objects

    startup = object.__new__(type("StartupObject", (), {}))
    assert gc.is_tracked(startup)
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 0
        # A frozen object is no longer in any generation that a collection scans.
        assert not any(item is startup for item in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(item is startup for item in gc.get_objects())

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from model.synthetic import make_phantom
from tests.conftest import shared_path
from tests.helpers import save_tiny_model
from worker.cli import build_parser, main

SUBCOMMANDS = [
    "train",
    "evaluate",
    "predict",
    "symmetrize",
    "build-atlas",
    "info",
    "segment",
    "demo",
    "api-key",
    "bench",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", "tiny-test")


@pytest.fixture(scope="module")
def phantom_test_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("testset")
    (root / "imagesTs").mkdir()
    (root / "labelsTs").mkdir()
    for index in range(2):
        phantom = make_phantom(size_xyz=(64, 64, 20), spacing_xyz_mm=(3.0, 3.0, 4.0), seed=index)
        sitk.WriteImage(phantom.ct, str(root / "imagesTs" / f"p{index}_0000.nii.gz"))
        sitk.WriteImage(phantom.lesion, str(root / "labelsTs" / f"p{index}.nii.gz"))
    return root


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "worker.cli", "--help"], capture_output=True, text=True, check=True)
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_option_has_help(command):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    for action in subparsers.choices[command]._actions:
        assert action.help, f"option {action.option_strings or action.dest} of {command} has no help"


def test_train_help_states_units(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "in mm" in text
    assert "embedding units" in text


def test_evaluate_writes_summary(tiny_model, phantom_test_set, tmp_path, capsys):
    output = tmp_path / "eval"
    code = main(["evaluate", str(phantom_test_set), "--model", str(tiny_model), "-o", str(output)])
    assert code == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["cases"] == 2
    for metric in ("dsc", "asd_mm", "hd95_mm"):
        assert set(summary[metric]) >= {"mean", "std", "n", "undefined"}
    assert (output / "cases.csv").read_text().startswith("case_id,dsc,asd_mm,hd95_mm")
    assert (output / "dsc.png").stat().st_size > 0
    assert "dsc: mean" in capsys.readouterr().out


def test_predict_mask_on_ct_grid(tiny_model, tmp_path):
    phantom = make_phantom(size_xyz=(64, 64, 20), spacing_xyz_mm=(3.0, 3.0, 4.0))
    ct_path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(phantom.ct, str(ct_path))
    assert main(["predict", str(ct_path), "--model", str(tiny_model), "-o", str(tmp_path / "out")]) == 0
    mask = sitk.ReadImage(str(tmp_path / "out" / "mask.nii.gz"))
    assert mask.GetSize() == phantom.ct.GetSize()
    assert np.allclose(mask.GetOrigin(), phantom.ct.GetOrigin())
    assert np.allclose(mask.GetSpacing(), phantom.ct.GetSpacing())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["name"] == "tiny-test"
    assert report["mid_sagittal_plane"]["mode"] == "self"


def test_predict_missing_file_names_path(tiny_model, tmp_path, caplog):
    missing = tmp_path / "absent.nii.gz"
    assert main(["predict", str(missing), "--model", str(tiny_model), "-o", str(tmp_path / "o")]) == 2
    assert str(missing) in caplog.text
    assert "input.not_found" in caplog.text


def test_bad_spacing_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["train", "data", "-o", "run", "--spacing", "3,4"])
    assert "expected three values" in capsys.readouterr().err


def test_demo_with_shipped_model(tmp_path, capsys):
    output = tmp_path / "demo"
    assert main(["demo", "-o", str(output)]) == 0
    report = json.loads((output / "report.json").read_text())
    assert "Research use only" in report["intended_use"]
    assert report["input"]["slice_count"] == len(list((output / "ct").iterdir()))
    for name in ("rtstruct.dcm", "seg.dcm", "qa.png"):
        assert (output / name).stat().st_size > 0
    assert "wrote rtstruct.dcm, seg.dcm, qa.png" in capsys.readouterr().out


def test_segment_rejects_tilted_series(tmp_path, caplog):
    assert main(["segment", str(shared_path("odd-gantry-tilt-head-ge")), "-o", str(tmp_path)]) == 2
    assert "series.gantry_tilt" in caplog.text
    assert not (tmp_path / "rtstruct.dcm").exists()


def test_segment_missing_input_named(tmp_path, caplog):
    assert main(["segment", str(tmp_path / "nothing"), "-o", str(tmp_path / "out")]) == 2
    assert "input.not_found" in caplog.text
    assert "nothing" in caplog.text


def test_segment_output_file_rejected_first(tmp_path, caplog):
    target = tmp_path / "afile"
    target.write_text("x")
    assert main(["segment", str(tmp_path), "-o", str(target)]) == 2
    assert "output.not_a_folder" in caplog.text


def test_segment_truncated_zip_named(tmp_path, caplog):
    archive = tmp_path / "ct.zip"
    archive.write_bytes(b"PK\x03\x04 truncated")
    assert main(["segment", str(archive), "-o", str(tmp_path / "out")]) == 2
    assert "input.zip_invalid" in caplog.text


def test_api_key_digest_matches(capsys):
    from app.settings import key_digest

    assert main(["api-key"]) == 0
    lines = capsys.readouterr().out.splitlines()
    key = lines[0].split()[-1]
    digest = lines[1].split()[-1]
    assert len(key) >= 40
    assert digest == key_digest(key)


def test_train_parses_auxiliary_labels():
    args = build_parser().parse_args(["train", "data", "-o", "run", "--auxiliary-labels", "8,9"])
    assert args.auxiliary_labels == (8, 9)
    assert args.auxiliary_weight == 1.0
    assert args.auxiliary_negative_weight == 1.0
    negative = ["train", "data", "-o", "run", "--auxiliary-labels", "8,9", "--auxiliary-negative-weight", "4"]
    assert build_parser().parse_args(negative).auxiliary_negative_weight == 4.0
    assert build_parser().parse_args(["train", "data", "-o", "run"]).auxiliary_labels == ()


def test_train_error_prints_no_bar(tmp_path, capsys, caplog):
    output = tmp_path / "run"
    code = main(["train", str(tmp_path), "-o", str(output), "--auxiliary-negative-weight", "4"])
    assert code == 2
    assert "needs auxiliary labels" in caplog.text
    assert "--auxiliary-labels" in caplog.text
    assert "step/s" not in capsys.readouterr().err
    assert not output.exists()


def test_train_deep_supervision_reaches_the_run(tmp_path):
    for index in range(3):
        phantom = make_phantom(size_xyz=(64, 64, 20), spacing_xyz_mm=(3.0, 3.0, 4.0), seed=index)
        for folder, name, image in (
            ("imagesTr", f"p{index}_0000", phantom.ct),
            ("labelsTr", f"p{index}", phantom.lesion),
        ):
            (tmp_path / folder).mkdir(exist_ok=True)
            sitk.WriteImage(image, str(tmp_path / folder / f"{name}.nii.gz"))
    output = tmp_path / "run"
    tiny = ["--spacing", "4,4,4", "--patch", "16,32,32", "--base-features", "4", "--max-features", "8"]
    schedule = ["--stages", "1", "--stage1-epochs", "1", "--iterations", "1", "--validation-fraction", "0.34"]
    options = ["--symmetrization", "self", "--no-mixed-precision", "--deep-supervision"]
    assert main(["train", str(tmp_path), "-o", str(output), *tiny, *schedule, *options]) == 0
    assert json.loads((output / "final.json").read_text())["training"]["deep_supervision"] is True
    assert build_parser().parse_args(["train", "data", "-o", "run"]).deep_supervision is False


def test_train_momentum_only_with_sgd(tmp_path, caplog):
    output = tmp_path / "run"
    code = main(["train", str(tmp_path), "-o", str(output), "--optimizer", "adamw", "--momentum", "0.9"])
    assert code == 2
    assert "--momentum 0.9 applies to --optimizer sgd only, not adamw" in caplog.text
    assert not output.exists()
    assert build_parser().parse_args(["train", "data", "-o", "run"]).optimizer == "sgd"

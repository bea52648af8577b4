import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from model.checkpoint import load_model, sha256_file
from model.errors import InputError
from model.network import NetworkConfig
from model.sampling import AugmentationConfig
from model.synthetic import make_phantom
from model.train import TrainConfig, Trainer, needs_loss_scaling, poly_learning_rate

TINY = NetworkConfig(base_features=4, max_features=16, encoder_blocks=(1, 1, 1, 1, 1))
NO_AUGMENTATION = AugmentationConfig(
    mirror_probability=0.0, rotation_probability=0.0, scale_probability=0.0, intensity_probability=0.0
)


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory):
    """Six phantoms in nnU-Net layout with the lesion on alternating sides."""
    root = tmp_path_factory.mktemp("phantoms")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    for index in range(6):
        phantom = make_phantom(
            size_xyz=(72, 72, 24),
            spacing_xyz_mm=(3.0, 3.0, 4.0),
            yaw_degrees=3.0 * index,
            lesion_side="left" if index % 2 else "right",
            seed=index,
        )
        sitk.WriteImage(phantom.ct, str(root / "imagesTr" / f"case{index}_0000.nii.gz"))
        sitk.WriteImage(phantom.lesion, str(root / "labelsTr" / f"case{index}.nii.gz"))
    return root


def config_for(root, output, **overrides):
    settings = dict(
        data_root=root,
        output_dir=output,
        cache_dir=output / "cache",
        layout="nnunet",
        train_split="Tr",
        validation_fraction=0.34,
        spacing_dhw_mm=(4.0, 4.0, 4.0),
        patch_size=(16, 32, 32),
        network=TINY,
        symmetrization="self",
        stage1_epochs=3,
        stage2_epochs=1,
        iterations_per_epoch=8,
        foreground_fraction=1.0,
        augmentation=NO_AUGMENTATION,
        mixed_precision=False,
        momentum=0.9,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def read_log(output):
    with (output / "log.csv").open() as stream:
        return list(csv.DictReader(stream))


def test_poly_learning_rate():
    assert poly_learning_rate(0.01, 0, 100, 0.9) == 0.01
    assert poly_learning_rate(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_learning_rate(0.01, 100, 100, 0.9) == 0.0


def test_tiny_training_lowers_loss(phantom_dataset, tmp_path):
    output = tmp_path / "run"
    Trainer(config_for(phantom_dataset, output)).run(stages=(1,))
    rows = read_log(output)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert (output / "final.safetensors").is_file()
    metadata = json.loads((output / "final.json").read_text())
    assert metadata["training"]["symmetrization"] == "self"
    assert len(metadata["training"]["training_cases"]) == 4


def test_resume_continues_into_stage_two(phantom_dataset, tmp_path):
    output = tmp_path / "run"
    Trainer(config_for(phantom_dataset, output, stage1_epochs=1)).run(stages=(1,))
    trainer = Trainer(config_for(phantom_dataset, output, stage1_epochs=1, embedding="head", margin=1.0))
    trainer.run(stages=(1, 2))
    rows = read_log(output)
    assert [(int(r["stage"]), int(r["epoch"])) for r in rows] == [(1, 1), (2, 1)]
    # Stage 1 has no head. In stage 2 the first epoch runs at the starting learning rates.
    assert rows[0]["head_lr"] == "nan"
    assert float(rows[1]["lr"]) == trainer.config.stage2_backbone_learning_rate
    assert float(rows[1]["head_lr"]) == trainer.config.head_learning_rate
    assert (output / "stage1_final.safetensors").is_file()
    assert trainer.model.head is not None
    training = json.loads((output / "final.json").read_text())["training"]
    assert training["stages_trained"] == [1, 2]
    assert training["initialised_from"] is None
    assert training["target"] == {"label_value": 1}


def test_older_log_keeps_its_columns(phantom_dataset, tmp_path):
    output = tmp_path / "run"
    Trainer(config_for(phantom_dataset, output, stage1_epochs=1)).run(stages=(1,))
    # Rewrite the log as a version without the head_lr column wrote it.
    old_columns = ["stage", "epoch", "loss", "val_dsc", "lr", "seconds"]
    rows = read_log(output)
    with (output / "log.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    Trainer(config_for(phantom_dataset, output, stage1_epochs=2)).run(stages=(1,))
    lines = (output / "log.csv").read_text().splitlines()
    assert lines[0] == ",".join(old_columns)
    assert [line.split(",")[:2] for line in lines[1:]] == [["1", "1"], ["1", "2"]]
    assert all(len(line.split(",")) == len(old_columns) for line in lines[1:])


def test_stage_two_from_stage_one_model(phantom_dataset, tmp_path):
    first = tmp_path / "stage1"
    Trainer(config_for(phantom_dataset, first, stage1_epochs=1)).run(stages=(1,))
    second = tmp_path / "stage2"
    trainer = Trainer(config_for(phantom_dataset, second, embedding="features", stage2_epochs=1))
    trainer.initialise_from(first / "final.safetensors")
    trainer.run(stages=(2,))
    rows = read_log(second)
    assert [(int(r["stage"]), int(r["epoch"])) for r in rows] == [(2, 1)]
    assert (second / "best.safetensors").is_file()
    metadata = json.loads((second / "best.json").read_text())
    assert metadata["training"]["embedding"] == "features"
    assert metadata["training"]["stages_trained"] == [2]
    start = {"name": "sats", "file": "final.safetensors", "sha256": sha256_file(first / "final.safetensors")}
    assert metadata["training"]["initialised_from"] == start
    # A resumed run does not call initialise_from again, so state.pt must keep the starting model.
    resumed = Trainer(config_for(phantom_dataset, second, embedding="features", stage2_epochs=1))
    assert resumed.load_state()
    assert resumed.initialised_from == start


def test_loss_scaling_only_for_fp16():
    assert needs_loss_scaling(torch.device("cuda"), mixed_precision=True)
    assert not needs_loss_scaling(torch.device("cuda"), mixed_precision=False)
    assert not needs_loss_scaling(torch.device("cpu"), mixed_precision=True)  # bf16 or fp32
    assert not needs_loss_scaling(torch.device("cpu"), mixed_precision=False)


def test_loss_scaling_leaves_updates_unchanged(phantom_dataset, tmp_path):
    """A power-of-two loss scale, undone before clipping, must give the same weights."""
    weights = []
    for scale in (None, 2.0**12):
        config = config_for(phantom_dataset, tmp_path / f"run-{scale}", stage1_epochs=1, iterations_per_epoch=3)
        trainer = Trainer(config)
        if scale is not None:
            trainer.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        trainer.run(stages=(1,))
        weights.append(trainer.model.unet.state_dict())
        if scale is not None:
            assert trainer.scaler.get_scale() == scale
    for name, plain in weights[0].items():
        assert torch.allclose(weights[1][name], plain, rtol=1e-5, atol=1e-7), name


@pytest.fixture(scope="module")
def auxiliary_dataset(phantom_dataset, tmp_path_factory):
    """The phantoms with label 2, an auxiliary structure, at the lesion's mirror position."""
    root = tmp_path_factory.mktemp("auxiliary")
    (root / "imagesTr").symlink_to(phantom_dataset / "imagesTr")
    (root / "labelsTr").mkdir()
    for path in sorted((phantom_dataset / "labelsTr").glob("*.nii.gz")):
        lesion = sitk.ReadImage(str(path))
        labels = sitk.GetArrayFromImage(lesion)  # (z, y, x); x runs left-right
        labels[(labels[..., ::-1] > 0) & (labels == 0)] = 2
        image = sitk.GetImageFromArray(labels)
        image.CopyInformation(lesion)
        sitk.WriteImage(image, str(root / "labelsTr" / path.name))
    return root


def test_auxiliary_output_trains_in_both_stages(auxiliary_dataset, tmp_path):
    output = tmp_path / "run"
    config = config_for(auxiliary_dataset, output, stage1_epochs=1, auxiliary_labels=(2,))
    trainer = Trainer(config)
    assert trainer.model.auxiliary is not None
    initial = trainer.model.auxiliary.weight.detach().clone()
    trainer.run(stages=(1, 2))

    assert [(int(r["stage"]), int(r["epoch"])) for r in read_log(output)] == [(1, 1), (2, 1)]
    assert not torch.equal(trainer.model.auxiliary.weight.detach(), initial)
    state = torch.load(output / "state.pt", weights_only=True)
    assert "auxiliary.weight" in state["model"]
    metadata = json.loads((output / "final.json").read_text())
    assert metadata["training"]["auxiliary_labels"] == [2]
    # The saved model is the encoder-decoder alone and loads like any other.
    unet, _ = load_model(output / "final.safetensors")
    assert not any("auxiliary" in name for name in unet.state_dict())
    cached = [np.load(path) for path in sorted((output / "cache").glob("*.npz"))]
    assert any("auxiliary" in stored.files and stored["auxiliary"].sum() > 0 for stored in cached)


def first_epoch_loss(dataset, output, **overrides):
    """Return the trainer and the loss of a one-step stage-1 epoch with a cache shared by all calls."""
    config = config_for(
        dataset, output, stage1_epochs=1, iterations_per_epoch=1, cache_dir=output.parent / "cache", **overrides
    )
    trainer = Trainer(config)
    trainer.run(stages=(1,))
    return trainer, float(read_log(output)[0]["loss"])


def test_auxiliary_weight_adds_to_loss(auxiliary_dataset, tmp_path):
    _, plain = first_epoch_loss(auxiliary_dataset, tmp_path / "plain")
    _, auxiliary = first_epoch_loss(auxiliary_dataset, tmp_path / "auxiliary", auxiliary_labels=(2,))
    # Same seed, same first batch and same initial weights: only the auxiliary term differs.
    assert auxiliary > plain + 0.1


def test_negative_weight_raises_loss(auxiliary_dataset, tmp_path):
    _, plain = first_epoch_loss(auxiliary_dataset, tmp_path / "plain", auxiliary_weight=0.0)
    trainer, weighted = first_epoch_loss(
        auxiliary_dataset,
        tmp_path / "weighted",
        auxiliary_labels=(2,),
        auxiliary_weight=0.0,
        auxiliary_negative_weight=5.0,
    )
    assert trainer.model.auxiliary is None  # weight 0: no auxiliary output
    metadata = json.loads((tmp_path / "weighted" / "final.json").read_text())
    assert metadata["training"]["auxiliary_negative_weight"] == 5.0
    # Same first batch and initial weights. Only the cross-entropy at label-2 voxels grows.
    assert weighted > plain + 0.01


@pytest.mark.parametrize(
    ("labels", "weight", "message"),
    [
        ((2,), -0.5, "auxiliary negative weight must be 0 or more, got -0.5"),
        ((), 3.0, "auxiliary negative weight 3.0 needs auxiliary labels"),
        ((2,), 1.0, r"auxiliary labels \(2,\) would be unused with auxiliary weight 0"),
    ],
)
def test_bad_negative_weight_rejected(auxiliary_dataset, tmp_path, labels, weight, message):
    config = config_for(
        auxiliary_dataset, tmp_path, auxiliary_labels=labels, auxiliary_weight=0.0, auxiliary_negative_weight=weight
    )
    with pytest.raises(InputError, match=message):
        Trainer(config)


def test_negative_auxiliary_weight_rejected(auxiliary_dataset, tmp_path):
    with pytest.raises(InputError, match="auxiliary weight must be 0 or more, got -1"):
        Trainer(config_for(auxiliary_dataset, tmp_path, auxiliary_labels=(2,), auxiliary_weight=-1.0))


def test_adamw_resumes_only_as_adamw(phantom_dataset, tmp_path):
    output = tmp_path / "run"
    trainer = Trainer(config_for(phantom_dataset, output, stage1_epochs=2, optimizer="adamw", learning_rate=1e-3))
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    trainer.run(stages=(1,))
    rows = read_log(output)
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    metadata = json.loads((output / "final.json").read_text())
    assert metadata["training"]["optimizer"] == "adamw"
    assert metadata["training"]["momentum"] is None
    # AdamW's moment estimates cannot continue as SGD momentum, so a resume must name the same optimiser.
    expected = "was trained with optimizer 'adamw', not 'sgd': resume with --optimizer adamw"
    with pytest.raises(InputError, match=expected):
        Trainer(config_for(phantom_dataset, output, stage1_epochs=2)).load_state()
    resumed = Trainer(config_for(phantom_dataset, output, stage1_epochs=2, optimizer="adamw", learning_rate=1e-3))
    assert resumed.load_state()
    assert resumed.optimizer.state_dict()["state"], "AdamW moments were not restored"


def test_unknown_optimizer_rejected(phantom_dataset, tmp_path):
    with pytest.raises(InputError, match=r"optimizer must be one of \('sgd', 'adamw'\), got 'adam'"):
        Trainer(config_for(phantom_dataset, tmp_path, optimizer="adam"))


def test_resume_uses_new_optimizer_settings(phantom_dataset, tmp_path):
    output = tmp_path / "run"
    Trainer(config_for(phantom_dataset, output, stage1_epochs=1)).run(stages=(1,))
    changed = dict(stage1_epochs=2, learning_rate=0.05, momentum=0.5, weight_decay=0.01)
    trainer = Trainer(config_for(phantom_dataset, output, **changed))
    trainer.run(stages=(1,))
    group = trainer.optimizer.param_groups[0]
    assert (group["initial_lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.5, 0.01)
    assert float(read_log(output)[1]["lr"]) == pytest.approx(poly_learning_rate(0.05, 1, 2, 0.9))
    assert json.loads((output / "final.json").read_text())["training"]["learning_rate"] == 0.05


def test_finished_run_unchanged_on_restart(phantom_dataset, tmp_path):
    output = tmp_path / "run"
    Trainer(config_for(phantom_dataset, output, stage1_epochs=1)).run(stages=(1,))
    records = {name: (output / name).read_bytes() for name in ("final.json", "final.safetensors", "config.json")}
    summary = Trainer(config_for(phantom_dataset, output, stage1_epochs=1, learning_rate=0.05)).run(stages=(1,))
    assert summary["final_validation_dsc"] is None
    assert {name: (output / name).read_bytes() for name in records} == records
    assert len(read_log(output)) == 1


def test_precision_change_logged_on_resume(phantom_dataset, tmp_path, caplog, monkeypatch):
    import model.train as train

    output = tmp_path / "run"
    Trainer(config_for(phantom_dataset, output, stage1_epochs=1)).run(stages=(1,))
    assert torch.load(output / "state.pt", weights_only=True)["precision"] == "fp32"
    # Pretend that the CPU has bf16. Only the resume check needs it, because nothing trains here.
    monkeypatch.setattr(train, "autocast_dtype", lambda device, enabled: torch.bfloat16 if enabled else None)
    with caplog.at_level("WARNING", logger="model.train"):
        assert Trainer(config_for(phantom_dataset, output, stage1_epochs=1, mixed_precision=True)).load_state()
    assert "resuming in bf16 autocast, but the saved state was trained in fp32" in caplog.text


def test_deep_supervision_trains_in_both_stages(phantom_dataset, tmp_path):
    output = tmp_path / "run"
    trainer = Trainer(config_for(phantom_dataset, output, stage1_epochs=1, deep_supervision=True))
    assert trainer.model.deep_scales == [(2, 2, 2), (4, 4, 4)]
    initial = [output_layer.weight.detach().clone() for output_layer in trainer.model.deep_outputs]
    trainer.run(stages=(1, 2))

    assert [(int(r["stage"]), int(r["epoch"])) for r in read_log(output)] == [(1, 1), (2, 1)]
    for output_layer, before in zip(trainer.model.deep_outputs, initial, strict=True):
        assert not torch.equal(output_layer.weight.detach(), before)
    assert "deep_outputs.1.weight" in torch.load(output / "state.pt", weights_only=True)["model"]
    assert json.loads((output / "final.json").read_text())["training"]["deep_supervision"] is True
    unet, _ = load_model(output / "final.safetensors")
    assert not any("deep" in name for name in unet.state_dict())


def test_deep_supervision_targets_are_pooled_masks(phantom_dataset, tmp_path):
    trainer = Trainer(config_for(phantom_dataset, tmp_path, deep_supervision=True))
    mask = torch.zeros(1, 1, 16, 32, 32)
    mask[..., 4:8, 8:12, 20:24] = 1  # a 4x4x4 block: one voxel of the coarsest output
    coarse = torch.zeros(1, 1, 4, 8, 8)
    coarse[..., 1, 2, 5] = 1
    middle = torch.nn.functional.interpolate(coarse, scale_factor=2.0)

    def logits(target):
        return 40 * target - 20  # confident and right wherever the target is 0 or 1

    right = trainer._tumour_loss(logits(mask), [logits(middle), logits(coarse)], mask, None)
    assert float(right) < 1e-3
    # The block shifted by one coarse voxel along W is wrong in both coarse outputs.
    shifted = torch.roll(coarse, 1, dims=-1)
    wrong = trainer._tumour_loss(
        logits(mask), [logits(torch.nn.functional.interpolate(shifted, scale_factor=2.0)), logits(shifted)], mask, None
    )
    # In each coarse output the Dice loss is 1 and the cross-entropy is 20 at the wrong
    # voxels (16 of 2,048 and 2 of 256), and the two weigh 2/7 and 1/7 of the total.
    assert float(wrong) == pytest.approx(3 / 7 * (1 + 20 * 16 / 2048), rel=1e-3)


def test_resume_with_other_outputs_rejected(phantom_dataset, tmp_path):
    output = tmp_path / "run"
    Trainer(config_for(phantom_dataset, output, stage1_epochs=1, deep_supervision=True)).run(stages=(1,))
    trainer = Trainer(config_for(phantom_dataset, output, stage1_epochs=2))
    with pytest.raises(InputError, match=r"unexpected deep_outputs\.0\.weight.*--deep-supervision"):
        trainer.load_state()

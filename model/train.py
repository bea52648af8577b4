"""Two-stage SATs training with resumable checkpoints.

Stage 1 trains the encoder-decoder alone with Dice + BCE. Stage 2 adds the Siamese
margin loss: with a projection head (full SATs, ``embedding="head"``), directly on the
unit-normalised decoder features (``"features"``), or not at all (``"none"``, the plain
network trained for the same budget). Both stages use SGD with Nesterov momentum, as
published, or AdamW (``optimizer="adamw"``), with poly learning-rate decay,
(1 - epoch / epochs) ** 0.9.

With ``auxiliary_labels``, a 1x1x1 output beside the tumour output also learns the union
of those label values (for OpenKBP, the lower-dose targets PTV56 and PTV63), with its own
Dice + BCE weighted by ``auxiliary_weight``. It is used in training only, and a weight of
0 leaves it out. ``auxiliary_negative_weight`` instead multiplies the tumour output's
cross-entropy on the auxiliary voxels outside the tumour, so that predicting tumour there
costs more. A factor of 1 leaves the loss as it is.

With ``deep_supervision``, the decoder stages between the deepest and the last get
training-only tumour outputs too, and the tumour loss averages them with the full-resolution
output (see :meth:`Trainer._tumour_loss`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from model.autocast_check import autocast_gradient_errors
from model.checkpoint import ModelMetadata, save_model, sha256_file
from model.data import CaseFiles, PreparedCase, discover, prepare_cached, target_definition
from model.errors import InputError, SymmetrizationError
from model.inference import autocast_context, autocast_dtype, sliding_window_probabilities
from model.losses import asymmetry_mask, margin_loss, segmentation_loss
from model.metrics import dice_coefficient
from model.network import NetworkConfig, SATsNetwork
from model.preprocess import IntensityNormalization
from model.sampling import AugmentationConfig, PatchSampler, augment

logger = logging.getLogger(__name__)

#: Callback after each training step: (stage, epoch, step, loss).
StepCallback = Callable[[int, int, int, float], None]


@dataclass
class TrainConfig:
    """Every setting of a training run; stored in the checkpoint metadata.

    Defaults follow the SATs paper where it states a value (SGD momentum 0.99, lr 1e-2,
    800 + 200 epochs, head lr 1e-2 and encoder-decoder lr 1e-5 in stage 2, batch 2,
    patch 56 x 192 x 192). The margin default is 1, not the paper's t = 20, because unit embeddings are at most 2
    apart and t = 20 never saturates (see :func:`model.losses.margin_loss`).
    """

    data_root: Path
    output_dir: Path
    cache_dir: Path
    layout: str = "nnunet"
    train_split: str = "Tr"
    validation_split: str | None = None
    label_value: int | None = None
    structures: tuple[str, ...] = ("GTVp", "GTVnd")
    validation_fraction: float = 0.2
    max_cases: int | None = None
    spacing_dhw_mm: tuple[float, float, float] = (3.0, 0.8, 0.8)
    patch_size: tuple[int, int, int] = (56, 192, 192)
    batch_size: int = 2
    network: NetworkConfig = field(default_factory=NetworkConfig)
    symmetrization: str = "atlas"
    atlas_path: Path | None = None
    stage1_epochs: int = 800
    stage2_epochs: int = 200
    iterations_per_epoch: int = 250
    learning_rate: float = 1e-2
    head_learning_rate: float = 1e-2
    stage2_backbone_learning_rate: float = 1e-5
    optimizer: str = "sgd"
    momentum: float = 0.99
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    embedding: str = "head"
    margin: float = 1.0
    beta: float = 1.0
    foreground_fraction: float = 0.33
    auxiliary_labels: tuple[int, ...] = ()
    auxiliary_weight: float = 1.0
    auxiliary_negative_weight: float = 1.0
    deep_supervision: bool = False
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    validate_every: int = 1
    seed: int = 12345
    mixed_precision: bool = True
    device: str = "auto"
    model_name: str = "sats"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable copy."""
        data = asdict(self)
        data["network"] = self.network.to_dict()
        data["target"] = target_definition(self.layout, self.label_value, self.structures)
        if self.optimizer != "sgd":
            data["momentum"] = None  # AdamW does not use the momentum setting.
        for key in ("data_root", "output_dir", "cache_dir", "atlas_path"):
            data[key] = None if data[key] is None else str(data[key])
        return data


def poly_learning_rate(initial: float, epoch: int, epochs: int, exponent: float) -> float:
    """Return ``initial * (1 - epoch / epochs) ** exponent``."""
    return initial * (1 - min(epoch, epochs) / max(epochs, 1)) ** exponent


def resolve_device(name: str) -> torch.device:
    """Return the torch device for ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def needs_loss_scaling(device: torch.device, mixed_precision: bool) -> bool:
    """Return whether training on ``device`` autocasts to fp16 and so needs a loss scaler.

    fp16 gradients below about 6e-8 round to zero, so the loss is scaled up before the
    backward pass and the gradients scaled back before clipping. bf16, used on CPUs, has
    the exponent range of fp32 and needs no scaling.

    NOTE: no CUDA training has run in this project's tests, which have no GPU. They check
    the scaled path on the CPU in fp32.
    """
    return autocast_dtype(device, mixed_precision) == torch.float16


def split_cases(config: TrainConfig) -> tuple[list[CaseFiles], list[CaseFiles]]:
    """Return (training, validation) case files.

    With ``validation_split`` the validation cases come from that split; otherwise the
    last ``validation_fraction`` of the sorted training cases are held out.
    """
    train = discover(
        config.data_root,
        config.layout,
        config.train_split,
        config.label_value,
        config.structures,
        config.auxiliary_labels,
    )
    if config.validation_split:
        # Validation scores the tumour only, so it needs no auxiliary masks.
        validation = discover(
            config.data_root, config.layout, config.validation_split, config.label_value, config.structures
        )
    else:
        held_out = max(1, int(round(len(train) * config.validation_fraction)))
        if held_out >= len(train):
            raise InputError(f"{len(train)} cases are too few to hold out {held_out} for validation")
        train, validation = train[:-held_out], train[-held_out:]
    if config.max_cases is not None:
        train = train[: config.max_cases]
        validation = validation[: max(1, config.max_cases // 4)]
    return train, validation


def load_atlas(config: TrainConfig) -> tuple[sitk.Image | None, str | None]:
    """Read the atlas for ``atlas`` mode and return it with its SHA-256."""
    if config.symmetrization != "atlas":
        return None, None
    if config.atlas_path is None or not config.atlas_path.is_file():
        raise InputError(f"atlas file not found: {config.atlas_path}", code="symmetry.no_atlas")
    return sitk.ReadImage(str(config.atlas_path), sitk.sitkFloat32), sha256_file(config.atlas_path)


def prepare_all(
    files: list[CaseFiles], config: TrainConfig, atlas: sitk.Image | None, atlas_sha256: str | None
) -> tuple[list[PreparedCase], dict[str, str]]:
    """Prepare (or read from the cache) every case.

    A case whose symmetrization fails is left out with a warning. The returned dict maps
    each such case id to its error, and the training metadata records it.
    """
    prepared = []
    excluded: dict[str, str] = {}
    for index, case in enumerate(files, start=1):
        try:
            prepared.append(
                prepare_cached(
                    case, config.cache_dir, config.spacing_dhw_mm, config.symmetrization, atlas, atlas_sha256
                )
            )
        except SymmetrizationError as error:
            logger.warning("case %s excluded: symmetrization failed: %s [%s]", case.case_id, error, error.code)
            excluded[case.case_id] = f"{error.code}: {error}"
        if index % 10 == 0 or index == len(files):
            logger.info("prepared %d of %d cases", index, len(files))
    return prepared, excluded


def normalize_cases(cases: list[PreparedCase], normalization: IntensityNormalization) -> list[PreparedCase]:
    """Return copies with ``image_hu`` replaced by the normalised float32 image."""
    return [replace(case, image_hu=normalization.apply(case.image_hu)) for case in cases]


def _first_names(names: list[str], limit: int = 3) -> str:
    """Return up to ``limit`` parameter names for an error message, or "none"."""
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


#: Optimisers that ``TrainConfig.optimizer`` names.
OPTIMIZERS = ("sgd", "adamw")


def _optimizer(model: SATsNetwork, stage: int, config: TrainConfig) -> torch.optim.Optimizer:
    # Training-only outputs beside the tumour output: the auxiliary and deep-supervision outputs.
    extra_outputs = [] if model.auxiliary is None else list(model.auxiliary.parameters())
    extra_outputs += list(model.deep_outputs.parameters())
    if stage == 1:
        groups = [
            {
                "params": list(model.unet.parameters()) + extra_outputs,
                "lr": config.learning_rate,
                "initial_lr": config.learning_rate,
            }
        ]
    else:
        groups = [
            {
                "params": list(model.unet.parameters()),
                "lr": config.stage2_backbone_learning_rate,
                "initial_lr": config.stage2_backbone_learning_rate,
            }
        ]
        # The head, the auxiliary output and the deep-supervision outputs may start
        # untrained in stage 2, so they get the head's learning rate.
        new_outputs = (list(model.head.parameters()) if model.head is not None else []) + extra_outputs
        if new_outputs:
            groups.append(
                {
                    "params": new_outputs,
                    "lr": config.head_learning_rate,
                    "initial_lr": config.head_learning_rate,
                }
            )
    if config.optimizer == "adamw":
        # AdamW decays weights decoupled from the gradient. Its betas are torch's defaults (0.9, 0.999).
        return torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        groups, lr=config.learning_rate, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
    )


def validate(model: SATsNetwork, cases: list[PreparedCase], config: TrainConfig, device: torch.device) -> float:
    """Return the mean DSC over ``cases`` in the symmetric frame (sliding window, threshold 0.5)."""
    scores = []
    for case in cases:
        probabilities = sliding_window_probabilities(
            model.unet, case.image_hu, config.patch_size, device=device, mixed_precision=config.mixed_precision
        )
        scores.append(dice_coefficient(probabilities >= 0.5, case.mask > 0))
    return float(np.mean(scores))


class Trainer:
    """Run or resume both training stages and write checkpoints to ``config.output_dir``.

    Files written: ``state.pt`` (resumable state, loadable with ``weights_only=True``),
    ``log.csv`` (one row per epoch: stage, epoch, mean loss, validation DSC, the
    encoder-decoder's learning rate ``lr``, the projection head's ``head_lr`` (nan in
    stage 1, which has no head) and seconds), ``stage1_best`` / ``best`` / ``final`` models
    (``.safetensors`` + ``.json``) and ``config.json``.
    """

    def __init__(self, config: TrainConfig, on_step: StepCallback | None = None) -> None:
        if config.embedding not in SATsNetwork.EMBEDDINGS:
            raise InputError(f"embedding must be one of {SATsNetwork.EMBEDDINGS}, got {config.embedding!r}")
        divisor = config.network.divisor
        if any(p % d for p, d in zip(config.patch_size, divisor, strict=True)):
            raise InputError(f"patch size {config.patch_size} must be a multiple of {divisor} (D, H, W)")
        if config.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")
        if config.auxiliary_weight < 0:
            raise InputError(f"auxiliary weight must be 0 or more, got {config.auxiliary_weight}")
        if config.auxiliary_negative_weight < 0:
            raise InputError(f"auxiliary negative weight must be 0 or more, got {config.auxiliary_negative_weight}")
        if config.auxiliary_labels and config.auxiliary_weight == 0 and config.auxiliary_negative_weight == 1:
            raise InputError(
                f"auxiliary labels {config.auxiliary_labels} would be unused with auxiliary weight 0 and "
                "auxiliary negative weight 1: raise --auxiliary-weight or --auxiliary-negative-weight, "
                "or leave out --auxiliary-labels"
            )
        if config.auxiliary_negative_weight != 1 and not config.auxiliary_labels:
            raise InputError(
                f"auxiliary negative weight {config.auxiliary_negative_weight} needs auxiliary labels: "
                "name the label values it applies to with --auxiliary-labels (8,9 for PTV56 and PTV63 in OpenKBP)"
            )
        self.config = config
        self.on_step = on_step
        self.device = resolve_device(config.device)
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.model = SATsNetwork(
            config.network,
            embedding=config.embedding,
            auxiliary_output=bool(config.auxiliary_labels) and config.auxiliary_weight > 0,
            deep_supervision=config.deep_supervision,
        ).to(self.device)
        self.stage = 1
        self.epoch = 0
        self.best_dsc = -1.0
        self.history: list[dict[str, float]] = []
        self.normalization: IntensityNormalization | None = None
        self.optimizer = _optimizer(self.model, 1, config)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=needs_loss_scaling(self.device, config.mixed_precision)
        )
        self.state_path = config.output_dir / "state.pt"
        self.data_summary: dict[str, Any] = {}
        # The model that stage 2 started from, when not this run's own stage 1.
        self.initialised_from: dict[str, str] | None = None

    # -- persistence ---------------------------------------------------------------------
    def save_state(self) -> None:
        """Write the resumable state atomically."""
        assert self.normalization is not None
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "stage": self.stage,
            "epoch": self.epoch,
            "best_dsc": self.best_dsc,
            "history": self.history,
            "optimizer_name": self.config.optimizer,
            "precision": self._precision(),
            "normalization": self.normalization.to_dict(),
            "initialised_from": self.initialised_from,
            "rng": json.dumps(self.rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
        }
        temporary = self.state_path.with_suffix(".tmp")
        torch.save(state, temporary)
        temporary.replace(self.state_path)

    def load_state(self) -> bool:
        """Resume from ``state.pt`` when it exists; return whether it did."""
        if not self.state_path.is_file():
            return False
        state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        # States written before the optimiser became a choice were all SGD.
        saved_optimizer = state.get("optimizer_name", "sgd")
        if saved_optimizer != self.config.optimizer:
            raise InputError(
                f"{self.state_path} was trained with optimizer {saved_optimizer!r}, not {self.config.optimizer!r}: "
                f"resume with --optimizer {saved_optimizer}, or start a new run in another output folder"
            )
        saved_precision = state.get("precision")
        if saved_precision is not None and saved_precision != self._precision():
            logger.warning("resuming in %s, but the saved state was trained in %s", self._precision(), saved_precision)
        self.stage = int(state["stage"])
        loaded = self.model.load_state_dict(state["model"], strict=False)
        if loaded.missing_keys or loaded.unexpected_keys:
            raise InputError(
                f"{self.state_path} contains a network whose training outputs differ from those of these settings "
                f"(missing {_first_names(loaded.missing_keys)}, unexpected {_first_names(loaded.unexpected_keys)}): "
                "resume with the --embedding, --auxiliary-labels and --deep-supervision settings the run was "
                "started with, or start a new run in another output folder"
            )
        self.optimizer = _optimizer(self.model, self.stage, self.config)
        requested = [dict(group) for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        self._apply_requested_settings(requested)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.best_dsc = float(state["best_dsc"])
        self.history = list(state["history"])
        self.normalization = IntensityNormalization(**state["normalization"])
        self.initialised_from = state.get("initialised_from")
        self.rng.bit_generator.state = json.loads(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed from %s at stage %d epoch %d", self.state_path, self.stage, self.epoch)
        return True

    def _apply_requested_settings(self, requested: list[dict[str, Any]]) -> None:
        """Restore this run's learning rates, momentum and weight decay after loading a saved optimiser.

        ``load_state_dict`` restores the hyperparameters saved with the state, so without
        this a resumed run would silently keep the old ones while its metadata recorded the
        new ones. The moment estimates stay as saved.
        """
        for index, (group, requested_group) in enumerate(zip(self.optimizer.param_groups, requested, strict=True)):
            for key in ("initial_lr", "momentum", "weight_decay", "betas"):
                if key in requested_group and group.get(key) != requested_group[key]:
                    logger.info(
                        "resumed with %s %s instead of the saved %s (parameter group %d)",
                        key,
                        requested_group[key],
                        group.get(key),
                        index,
                    )
                    group[key] = requested_group[key]

    def initialise_from(self, weights: Path) -> None:
        """Start stage 2 from the encoder-decoder weights of a stage-1 model."""
        from model.checkpoint import load_model

        unet, metadata = load_model(weights, self.device)
        self.model.unet.load_state_dict(unet.state_dict())
        self.normalization = metadata.normalization
        self.initialised_from = {"name": metadata.name, "file": weights.name, "sha256": sha256_file(weights)}
        self.stage, self.epoch = 2, 0
        self.optimizer = _optimizer(self.model, 2, self.config)
        logger.info("initialised the encoder-decoder from %s; starting stage 2", weights)

    def _metadata(self, metrics: dict[str, Any]) -> ModelMetadata:
        assert self.normalization is not None
        return ModelMetadata(
            name=self.config.model_name,
            network=self.config.network,
            spacing_dhw_mm=self.config.spacing_dhw_mm,
            patch_size=self.config.patch_size,
            symmetrization=self.config.symmetrization,
            normalization=self.normalization,
            training={
                **self.config.to_dict(),
                **self.data_summary,
                # Stages this run trained, resumed parts included. The epoch counts above are
                # the configured ones, and a stage-2-only run starts from initialised_from.
                "stages_trained": sorted({int(row["stage"]) for row in self.history} | {self.stage}),
            },
            metrics=metrics,
        )

    def _write_model(self, name: str, metrics: dict[str, Any]) -> None:
        save_model(self.model.unet, self._metadata(metrics), self.config.output_dir / f"{name}.safetensors")

    # -- training ------------------------------------------------------------------------
    def _step(self, sampler: PatchSampler) -> float:
        config = self.config
        batch = augment(sampler.sample(config.batch_size), config.augmentation, self.rng)
        image, image_m = batch.image.to(self.device), batch.image_mirrored.to(self.device)
        mask, mask_m = batch.mask.to(self.device), batch.mask_mirrored.to(self.device)
        with autocast_context(self.device, config.mixed_precision):
            if self.stage == 1:
                single = self.model.segment(image)
                loss = self._tumour_loss(single.logits, single.deep_logits, mask, batch.auxiliary)
                loss = loss + config.auxiliary_weight * self._auxiliary_loss(
                    [single.auxiliary_logits], [batch.auxiliary]
                )
            else:
                output = self.model.siamese(image, image_m)
                loss = (
                    self._tumour_loss(output.logits, output.deep_logits, mask, batch.auxiliary)
                    + self._tumour_loss(
                        output.logits_flipped, output.deep_logits_flipped, mask_m, batch.auxiliary_mirrored
                    )
                ) / 2
                loss = loss + config.auxiliary_weight * self._auxiliary_loss(
                    [output.auxiliary_logits, output.auxiliary_logits_flipped],
                    [batch.auxiliary, batch.auxiliary_mirrored],
                )
                if output.embedding is not None and output.embedding_flipped is not None:
                    asymmetry = asymmetry_mask(mask, mask_m)
                    loss = loss + config.beta * margin_loss(
                        output.embedding, output.embedding_flipped, asymmetry, config.margin
                    )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 12.0)
        self.scaler.step(self.optimizer)  # skipped when a gradient overflowed
        self.scaler.update()
        return float(loss.detach())

    def _tumour_loss(
        self,
        logits: torch.Tensor,
        deep_logits: list[torch.Tensor],
        mask: torch.Tensor,
        auxiliary: torch.Tensor | None,
    ) -> torch.Tensor:
        """Return the tumour output's Dice + BCE, averaged with its deep-supervision outputs.

        Output k (0: full resolution, then ever coarser) weighs 2^-k, normalised so that the
        weights sum to 1, as in nnU-Net. A coarse output's target is the tumour fraction of
        the voxels it covers (average pooling), and its cross-entropy is unweighted.
        """
        loss = segmentation_loss(logits, mask, self._bce_weight(mask, auxiliary))
        if not deep_logits:
            return loss
        weights = [2.0**-k for k in range(len(deep_logits) + 1)]
        loss = weights[0] * loss
        for weight, level, scale in zip(weights[1:], deep_logits, self.model.deep_scales, strict=True):
            target = torch.nn.functional.avg_pool3d(mask.float(), kernel_size=scale, stride=scale)
            loss = loss + weight * segmentation_loss(level, target)
        return loss / sum(weights)

    def _bce_weight(self, mask: torch.Tensor, auxiliary: torch.Tensor | None) -> torch.Tensor | None:
        """Return the tumour cross-entropy's voxel weights, or None when every voxel weighs 1."""
        weight = self.config.auxiliary_negative_weight
        if weight == 1 or auxiliary is None:
            return None
        negatives = (auxiliary.to(self.device) > 0) & ~(mask > 0)
        return 1 + (weight - 1) * negatives.float()

    def _auxiliary_loss(self, logits: list[torch.Tensor | None], targets: list[torch.Tensor | None]) -> torch.Tensor:
        """Return the mean Dice + BCE of the auxiliary outputs (one per branch), or 0 without them."""
        losses = [
            segmentation_loss(branch_logits, target.to(self.device))
            for branch_logits, target in zip(logits, targets, strict=True)
            if branch_logits is not None and target is not None
        ]
        if not losses:
            return torch.zeros((), device=self.device)
        return torch.stack(losses).mean()

    def _set_learning_rates(self, epochs: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = poly_learning_rate(group["initial_lr"], self.epoch, epochs, self.config.poly_exponent)

    def _log_epoch(self, row: dict[str, float]) -> None:
        self.history.append(row)
        path = self.config.output_dir / "log.csv"
        new = not path.is_file()
        fieldnames = list(row)
        if not new:
            # A log started by an older version has fewer columns. Its header is kept so
            # that the rows stay aligned, and the new columns are left out.
            with path.open(newline="") as stream:
                fieldnames = next(csv.reader(stream), fieldnames)
        with path.open("a", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=fieldnames, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        logger.info(
            "stage %d epoch %d: loss %.4f, validation DSC %s, %.0f s",
            row["stage"],
            row["epoch"],
            row["loss"],
            "n/a" if math.isnan(row["val_dsc"]) else f"{row['val_dsc']:.4f}",
            row["seconds"],
        )

    def run(self, stages: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
        """Train the requested stages, resuming from ``state.pt`` when present.

        Returns a summary with the best validation DSC and the model paths written.
        """
        config = self.config
        config.output_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.load_state()
        if not resumed and self.stage == 1 and 1 not in stages:
            raise InputError("stage 2 alone needs a stage-1 model: pass init_from or run stage 1 first")
        final = config.output_dir / "final.safetensors"
        if resumed and final.is_file() and not self._work_left(stages):
            # A finished run keeps the records of the settings it was trained with.
            logger.info("nothing left to train in %s; %s is unchanged", config.output_dir, final.name)
            return {
                "best_validation_dsc": self.best_dsc,
                "final_validation_dsc": None,
                "output_dir": str(config.output_dir),
            }
        self._check_autocast(stages)
        (config.output_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

        atlas, atlas_sha256 = load_atlas(config)
        train_files, validation_files = split_cases(config)
        train_cases, excluded = prepare_all(train_files, config, atlas, atlas_sha256)
        validation_cases, excluded_validation = prepare_all(validation_files, config, atlas, atlas_sha256)
        self.data_summary = {
            "training_cases": [c.case_id for c in train_cases],
            "validation_cases": [c.case_id for c in validation_cases],
            "excluded_cases": {**excluded, **excluded_validation},
            "atlas_sha256": atlas_sha256,
            "initialised_from": self.initialised_from,
        }
        if self.normalization is None:
            foreground = np.concatenate([c.image_hu[c.mask > 0] for c in train_cases])
            self.normalization = IntensityNormalization.from_foreground(foreground.astype(np.float32))
        train_cases = normalize_cases(train_cases, self.normalization)
        validation_cases = normalize_cases(validation_cases, self.normalization)
        sampler = PatchSampler(train_cases, config.patch_size, config.foreground_fraction, self.rng)
        logger.info(
            "training on %d cases, validating on %d, device %s, %s",
            len(train_cases),
            len(validation_cases),
            self.device,
            self._precision(),
        )

        for stage in (1, 2):
            if stage not in stages or stage < self.stage:
                continue
            if stage > self.stage:
                self._write_model("stage1_final", {"validation_dsc": self.best_dsc})
                self.stage, self.epoch, self.best_dsc = stage, 0, -1.0
                self.optimizer = _optimizer(self.model, stage, config)
            epochs = config.stage1_epochs if stage == 1 else config.stage2_epochs
            while self.epoch < epochs:
                self._train_epoch(sampler, validation_cases, epochs)

        last = self.history[-1] if self.history else None
        if last is not None and not math.isnan(last["val_dsc"]):
            final_dsc = float(last["val_dsc"])  # the last epoch was validated already
        else:
            final_dsc = validate(self.model, validation_cases, config, self.device)
        self._write_model("final", {"validation_dsc_symmetric_frame": final_dsc})
        return {
            "best_validation_dsc": self.best_dsc,
            "final_validation_dsc": final_dsc,
            "output_dir": str(config.output_dir),
        }

    def _precision(self) -> str:
        """Return the precision of the training steps: "bf16 autocast", "fp16 autocast" or "fp32"."""
        dtype = autocast_dtype(self.device, self.config.mixed_precision)
        if dtype is None:
            return "fp32"
        return {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[dtype]

    def _work_left(self, stages: tuple[int, ...]) -> bool:
        """Return whether any epoch of ``stages`` remains after the current position."""
        epochs = {1: self.config.stage1_epochs, 2: self.config.stage2_epochs}
        if self.stage in stages and self.epoch < epochs[self.stage]:
            return True
        return any(stage > self.stage and epochs[stage] > 0 for stage in stages)

    def _check_autocast(self, stages: tuple[int, ...]) -> None:
        """Stop before training when bf16 autocast gets this network's gradients wrong on this CPU."""
        config = self.config
        if autocast_dtype(self.device, config.mixed_precision) != torch.bfloat16:
            return
        patch = tuple(config.patch_size)
        batch = config.batch_size
        # Stage 2 runs both Siamese branches as one batch of twice the size.
        runs = [stage for stage in stages if stage >= self.stage]
        shapes = [(batch, 1, *patch)] if 1 in runs else []
        if 2 in runs:
            shapes.append((2 * batch, 1, *patch))
        started = time.monotonic()
        problems = [f"unet.{line}" for line in autocast_gradient_errors(self.model.unet, shapes)]
        if 2 in runs and self.model.head is not None:
            head_input = (2 * batch, self.model.unet.feature_channels, *patch)
            problems += [f"head.{line}" for line in autocast_gradient_errors(self.model.head, [head_input])]
        logger.info("checked bf16 autocast gradients against fp32 in %.0f s", time.monotonic() - started)
        if problems:
            raise InputError(
                f"bf16 autocast on this CPU computes wrong gradients (torch {torch.__version__}) for "
                f"{len(problems)} convolution(s): {'; '.join(problems[:3])}. Train in fp32 with "
                "--no-mixed-precision, or choose a patch size whose downsampled levels are never 2 voxels "
                "deep (see model/autocast_check.py)"
            )

    def _train_epoch(self, sampler: PatchSampler, validation_cases: list[PreparedCase], epochs: int) -> None:
        config = self.config
        self._set_learning_rates(epochs)
        self.model.train()
        started = time.monotonic()
        losses = []
        for step in range(config.iterations_per_epoch):
            loss = self._step(sampler)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at stage {self.stage} epoch {self.epoch} step {step}")
            losses.append(loss)
            if self.on_step is not None:
                self.on_step(self.stage, self.epoch, step, loss)
        self.epoch += 1
        dsc = math.nan
        if validation_cases and (self.epoch % config.validate_every == 0 or self.epoch == epochs):
            dsc = validate(self.model, validation_cases, config, self.device)
            if dsc > self.best_dsc:
                self.best_dsc = dsc
                self._write_model(
                    "best" if self.stage == 2 else "stage1_best",
                    {"validation_dsc_symmetric_frame": dsc, "stage": self.stage, "epoch": self.epoch},
                )
        groups = self.optimizer.param_groups
        # In stage 2 the second group contains the projection head and any auxiliary output.
        head_lr = float(groups[1]["lr"]) if len(groups) > 1 else math.nan
        self._log_epoch(
            {
                "stage": self.stage,
                "epoch": self.epoch,
                "loss": float(np.mean(losses)),
                "val_dsc": dsc,
                "lr": float(groups[0]["lr"]),
                "head_lr": head_lr,
                "seconds": time.monotonic() - started,
            }
        )
        self.save_state()

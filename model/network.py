"""3-D residual U-Net, projection head and the Siamese forward pass of SATs.

Tensors are ``(N, C, D, H, W)``. In the symmetric frame the last axis (W) runs
left-right, so ``torch.flip(x, dims=(-1,))`` is the mirror image across the
mid-sagittal plane.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Stride = tuple[int, int, int]


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of the residual U-Net.

    Attributes
    ----------
    in_channels
        Input channels (1: the normalised CT).
    base_features
        Feature maps of the first stage; each downsampling doubles them up to
        ``max_features``.
    max_features
        Cap on the feature maps of any stage (320 as in nnU-Net, so the bottleneck of a
        32-filter network has 320 rather than 512 channels).
    strides
        Stride of each of the downsamplings, ``(D, H, W)``. An axis whose spacing is
        much coarser than the others keeps stride 1 until the others catch up (see
        :func:`plan_strides`).
    encoder_blocks
        Residual blocks per encoder stage, one entry per stage (``len(strides) + 1``).
    decoder_blocks
        Residual blocks per decoder stage, from the deepest upsampling to the last
        (``len(strides)`` entries).
    embedding_channels
        Output channels of the projection head.
    """

    in_channels: int = 1
    base_features: int = 32
    max_features: int = 320
    strides: tuple[Stride, ...] = ((2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    encoder_blocks: tuple[int, ...] = (1, 1, 1, 2, 2)
    decoder_blocks: tuple[int, ...] = (1, 1, 1, 1)
    embedding_channels: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.base_features < 1:
            raise ValueError(f"base_features must be >= 1, got {self.base_features!r}")
        if len(self.encoder_blocks) != len(self.strides) + 1:
            raise ValueError(
                f"encoder_blocks needs {len(self.strides) + 1} entries (one per stage), got {self.encoder_blocks!r}"
            )
        if len(self.decoder_blocks) != len(self.strides):
            raise ValueError(
                f"decoder_blocks needs {len(self.strides)} entries (one per upsampling), got {self.decoder_blocks!r}"
            )
        for stride in self.strides:
            if len(stride) != 3 or any(s not in (1, 2) for s in stride):
                raise ValueError(f"each stride must be three values of 1 or 2, got {stride!r}")

    @property
    def features(self) -> list[int]:
        """Feature maps per stage, from full resolution to the bottleneck."""
        return [min(self.base_features * 2**level, self.max_features) for level in range(len(self.strides) + 1)]

    @property
    def level_scales(self) -> list[Stride]:
        """Downsampling factor ``(D, H, W)`` of each level, from full resolution to the bottleneck."""
        scales: list[Stride] = [(1, 1, 1)]
        for stride in self.strides:
            previous = scales[-1]
            scales.append((previous[0] * stride[0], previous[1] * stride[1], previous[2] * stride[2]))
        return scales

    @property
    def divisor(self) -> tuple[int, int, int]:
        """Factor that each patch dimension ``(D, H, W)`` must be a multiple of."""
        return self.level_scales[-1]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description (lists for tuples)."""
        data = asdict(self)
        data["strides"] = [list(s) for s in self.strides]
        data["encoder_blocks"] = list(self.encoder_blocks)
        data["decoder_blocks"] = list(self.decoder_blocks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        """Rebuild a config written by :meth:`to_dict`."""
        return cls(
            in_channels=int(data["in_channels"]),
            base_features=int(data["base_features"]),
            max_features=int(data["max_features"]),
            strides=tuple(tuple(int(v) for v in s) for s in data["strides"]),  # type: ignore[misc]
            encoder_blocks=tuple(int(v) for v in data["encoder_blocks"]),
            decoder_blocks=tuple(int(v) for v in data["decoder_blocks"]),
            embedding_channels=int(data.get("embedding_channels", 16)),
            extra=dict(data.get("extra", {})),
        )


def plan_strides(spacing_dhw: Sequence[float], downsamplings: int = 4) -> tuple[Stride, ...]:
    """Choose anisotropic strides so that coarse axes are downsampled later.

    At each level an axis is downsampled when its current spacing is at most twice the
    finest current spacing. This is the rule nnU-Net uses, so a 3 mm x 0.8 mm x 0.8 mm
    grid keeps full resolution along D for the first downsampling.

    Parameters
    ----------
    spacing_dhw
        Voxel spacing of the network input in mm, ``(D, H, W)``.
    downsamplings
        Number of stride-2 levels.
    """
    if len(spacing_dhw) != 3 or min(spacing_dhw) <= 0:
        raise ValueError(f"spacing must be three positive values in mm, got {spacing_dhw!r}")
    current = [float(s) for s in spacing_dhw]
    strides: list[Stride] = []
    for _ in range(downsamplings):
        finest = min(current)
        stride = tuple(2 if s <= 2 * finest else 1 for s in current)
        current = [s * f for s, f in zip(current, stride, strict=True)]
        strides.append((stride[0], stride[1], stride[2]))
    return tuple(strides)


class ConvNormAct(nn.Sequential):
    """3x3x3 convolution, InstanceNorm and LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: Stride = (1, 1, 1)) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two 3x3x3 convolutions with InstanceNorm and LeakyReLU and an identity shortcut.

    The second activation follows the addition, as in ResNet. A 1x1x1 convolution
    projects the shortcut when the channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.norm2 = nn.InstanceNorm3d(out_channels, affine=True)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        self.shortcut: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1),
                nn.InstanceNorm3d(out_channels, affine=True),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.norm2(self.conv2(self.conv1(x)))
        return self.act(residual + self.shortcut(x))


def _residual_stack(in_channels: int, out_channels: int, blocks: int) -> nn.Sequential:
    layers = [ResidualBlock(in_channels, out_channels)]
    layers += [ResidualBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResidualUNet(nn.Module):
    """Residual encoder-decoder with skip connections and one output channel (tumour logit)."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        features = config.features

        self.stem = ConvNormAct(config.in_channels, features[0])
        self.encoder = nn.ModuleList([_residual_stack(features[0], features[0], config.encoder_blocks[0])])
        self.downsample = nn.ModuleList()
        for level, stride in enumerate(config.strides, start=1):
            self.downsample.append(ConvNormAct(features[level - 1], features[level], stride))
            self.encoder.append(_residual_stack(features[level], features[level], config.encoder_blocks[level]))

        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i, level in enumerate(range(len(config.strides), 0, -1)):
            stride = config.strides[level - 1]
            self.upsample.append(nn.ConvTranspose3d(features[level], features[level - 1], stride, stride=stride))
            self.decoder.append(_residual_stack(2 * features[level - 1], features[level - 1], config.decoder_blocks[i]))
        self.output = nn.Conv3d(features[0], 1, 1)

    @property
    def feature_channels(self) -> int:
        """Channels of the last decoder features (the projection head's input)."""
        return self.config.features[0]

    def decoder_scales(self) -> list[Stride]:
        """Downsampling factor ``(D, H, W)`` of each decoder stage's output, deepest first.

        Decoder stage i works at level ``len(strides) - 1 - i``, so the last entry is
        ``(1, 1, 1)``: the last decoder stage works at full resolution.
        """
        return self.config.level_scales[-2::-1]

    def decoder_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the output of every decoder stage, deepest first, so the last is at full resolution."""
        divisor = self.config.divisor
        if any(size % d for size, d in zip(x.shape[2:], divisor, strict=True)):
            raise ValueError(f"input size {tuple(x.shape[2:])} (D, H, W) must be a multiple of {divisor}")
        skips = []
        out = self.encoder[0](self.stem(x))
        for down, stage in zip(self.downsample, self.encoder[1:], strict=True):
            skips.append(out)
            out = stage(down(out))
        outputs = []
        for up, stage in zip(self.upsample, self.decoder, strict=True):
            out = stage(torch.cat([up(out), skips.pop()], dim=1))
            outputs.append(out)
        return outputs

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits, features)``: ``(N, 1, D, H, W)`` and the last decoder features."""
        features = self.decoder_features(x)[-1]
        return self.output(features), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return tumour logits ``(N, 1, D, H, W)`` for input ``(N, C, D, H, W)``."""
        return self.forward_features(x)[0]


class ProjectionHead(nn.Module):
    """Three 1x1x1 convolutions (ReLU after the first two) and unit L2 norm over channels."""

    def __init__(self, in_channels: int, channels: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv3d(in_channels, channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv3d(channels, channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv3d(channels, channels, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map decoder features ``(N, C, D, H, W)`` to unit embeddings ``(N, 16, D, H, W)``."""
        return F.normalize(self.layers(features).float(), p=2.0, dim=1)


@dataclass
class SiameseOutput:
    """Outputs of both branches. Index ``v`` of a primed tensor belongs to the flipped input.

    For a voxel ``v`` the pair ``embedding[..., v]`` / ``embedding_flipped[..., v]``
    compares the anatomy at ``v`` with the anatomy at the mirror position of ``v``,
    because the flipped branch receives the mirror image, whose voxel ``v`` shows the
    mirror position.
    """

    logits: torch.Tensor
    logits_flipped: torch.Tensor
    embedding: torch.Tensor | None
    embedding_flipped: torch.Tensor | None
    auxiliary_logits: torch.Tensor | None = None
    auxiliary_logits_flipped: torch.Tensor | None = None
    deep_logits: list[torch.Tensor] = field(default_factory=list)
    deep_logits_flipped: list[torch.Tensor] = field(default_factory=list)


@dataclass
class SegmentOutput:
    """Outputs of one branch: tumour logits, auxiliary logits and the deep-supervision logits.

    ``deep_logits[i]`` is at the resolution that :attr:`SATsNetwork.deep_scales` ``[i]``
    divides the input by.
    """

    logits: torch.Tensor
    auxiliary_logits: torch.Tensor | None = None
    deep_logits: list[torch.Tensor] = field(default_factory=list)


class SATsNetwork(nn.Module):
    """Residual U-Net with an optional projection head, run as a Siamese pair.

    Parameters
    ----------
    config
        Architecture.
    embedding
        ``"head"``: projection head on the last decoder features (full SATs).
        ``"features"``: unit-normalised decoder features without a head (ablation).
        ``"none"``: segmentation only (stage 1 and the plain network).
    auxiliary_output
        Add a 1x1x1 convolution beside the tumour output that predicts the auxiliary
        structure from the same decoder features. Like the head, it is used in training
        only and is not part of the saved encoder-decoder.
    deep_supervision
        Add a 1x1x1 tumour output to each decoder stage between the deepest and the last,
        as nnU-Net does, so that the loss also reaches the decoder through coarser
        predictions. Training only, like the head: not part of the saved encoder-decoder.
    """

    EMBEDDINGS = ("head", "features", "none")

    def __init__(
        self,
        config: NetworkConfig,
        embedding: str = "none",
        auxiliary_output: bool = False,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if embedding not in self.EMBEDDINGS:
            raise ValueError(f"embedding must be one of {self.EMBEDDINGS}, got {embedding!r}")
        self.unet = ResidualUNet(config)
        self.embedding_kind = embedding
        self.head = (
            ProjectionHead(self.unet.feature_channels, config.embedding_channels) if embedding == "head" else None
        )
        self.auxiliary = nn.Conv3d(self.unet.feature_channels, 1, 1) if auxiliary_output else None
        # Decoder stage i (deepest first) has features[len(strides) - 1 - i] channels. The
        # deepest stage gets no output (nnU-Net gives it weight 0), nor does the last, which
        # has the tumour output. The stages are listed finest first, like the outputs.
        stages = len(config.strides)
        self._deep_stages = list(range(stages - 2, 0, -1)) if deep_supervision else []
        self.deep_outputs = nn.ModuleList([nn.Conv3d(config.features[stages - 1 - i], 1, 1) for i in self._deep_stages])

    @property
    def deep_scales(self) -> list[Stride]:
        """Downsampling factor ``(D, H, W)`` of each deep-supervision output, finest first."""
        scales = self.unet.decoder_scales()
        return [scales[i] for i in self._deep_stages]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return tumour logits; inference needs only the encoder-decoder."""
        return self.unet(x)

    def segment(self, x: torch.Tensor) -> SegmentOutput:
        """Return the tumour, auxiliary and deep-supervision logits of one branch."""
        stages = self.unet.decoder_features(x)
        features = stages[-1]
        return SegmentOutput(
            logits=self.unet.output(features),
            auxiliary_logits=None if self.auxiliary is None else self.auxiliary(features),
            deep_logits=self._deep(stages),
        )

    def _deep(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        """Apply the deep-supervision outputs to their decoder stages and return the logits, finest first."""
        return [output(stages[i]) for i, output in zip(self._deep_stages, self.deep_outputs, strict=True)]

    def _embed(self, features: torch.Tensor) -> torch.Tensor | None:
        if self.embedding_kind == "head":
            assert self.head is not None
            return self.head(features)
        if self.embedding_kind == "features":
            return F.normalize(features.float(), p=2.0, dim=1)
        return None

    def siamese(self, x: torch.Tensor, x_flipped: torch.Tensor) -> SiameseOutput:
        """Run the shared network on a patch and on the same patch of the mirrored volume.

        Parameters
        ----------
        x
            Patch ``(N, C, D, H, W)`` of the symmetric-frame volume.
        x_flipped
            Patch at the same index range of the volume flipped along W. When the patch
            spans the full width this is ``torch.flip(x, dims=(-1,))``.
        """
        if x.shape != x_flipped.shape:
            raise ValueError(f"branch shapes differ: {tuple(x.shape)} vs {tuple(x_flipped.shape)}")
        batch = x.shape[0]
        stages = self.unet.decoder_features(torch.cat([x, x_flipped], dim=0))
        features = stages[-1]
        logits = self.unet.output(features)
        embedding = self._embed(features)
        auxiliary = None if self.auxiliary is None else self.auxiliary(features)
        deep = self._deep(stages)
        return SiameseOutput(
            logits=logits[:batch],
            logits_flipped=logits[batch:],
            embedding=None if embedding is None else embedding[:batch],
            embedding_flipped=None if embedding is None else embedding[batch:],
            auxiliary_logits=None if auxiliary is None else auxiliary[:batch],
            auxiliary_logits_flipped=None if auxiliary is None else auxiliary[batch:],
            deep_logits=[level[:batch] for level in deep],
            deep_logits_flipped=[level[batch:] for level in deep],
        )


def count_parameters(module: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

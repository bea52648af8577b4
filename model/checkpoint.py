"""Model checkpoints: safetensors weights plus a JSON metadata record.

``NAME.safetensors`` contains the encoder-decoder weights only (inference needs nothing
else). ``NAME.json`` contains everything needed to rebuild and apply the network:
architecture, voxel spacing, patch size, symmetrization mode, intensity normalisation,
training data and metrics, code version and the SHA-256 of the weights file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model import __version__
from model.errors import ModelError
from model.network import NetworkConfig, ResidualUNet
from model.preprocess import IntensityNormalization

FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ModelMetadata:
    """Everything besides the weights that inference and provenance need."""

    name: str
    network: NetworkConfig
    spacing_dhw_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    symmetrization: str
    normalization: IntensityNormalization
    threshold: float = 0.5
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    intended_use: str = "Research use only. Not for clinical use."
    code_version: str = __version__
    weights_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON record."""
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "intended_use": self.intended_use,
            "network": self.network.to_dict(),
            "spacing_dhw_mm": list(self.spacing_dhw_mm),
            "patch_size": list(self.patch_size),
            "symmetrization": self.symmetrization,
            "normalization": self.normalization.to_dict(),
            "threshold": self.threshold,
            "training": self.training or {},
            "metrics": self.metrics or {},
            "code_version": self.code_version,
            "weights_sha256": self.weights_sha256,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        """Parse a JSON record written by :meth:`to_dict`."""
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelError(
                f"unsupported checkpoint format_version {data.get('format_version')!r}; "
                f"this code reads version {FORMAT_VERSION}"
            )
        spacing = tuple(float(v) for v in data["spacing_dhw_mm"])
        patch = tuple(int(v) for v in data["patch_size"])
        return cls(
            name=str(data["name"]),
            network=NetworkConfig.from_dict(data["network"]),
            spacing_dhw_mm=(spacing[0], spacing[1], spacing[2]),
            patch_size=(patch[0], patch[1], patch[2]),
            symmetrization=str(data["symmetrization"]),
            normalization=IntensityNormalization(**data["normalization"]),
            threshold=float(data.get("threshold", 0.5)),
            training=data.get("training"),
            metrics=data.get("metrics"),
            intended_use=str(data.get("intended_use", "")),
            code_version=str(data.get("code_version", "")),
            weights_sha256=str(data.get("weights_sha256", "")),
        )


def save_model(network: ResidualUNet, metadata: ModelMetadata, weights_path: Path) -> Path:
    """Write ``weights_path`` (safetensors, fp32) and the metadata JSON beside it.

    Returns the metadata path (same stem, ``.json``).
    """
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().float().contiguous().cpu() for key, value in network.state_dict().items()}
    temporary = weights_path.with_suffix(".tmp")
    save_file(tensors, str(temporary), metadata={"name": metadata.name})
    temporary.replace(weights_path)
    metadata.weights_sha256 = sha256_file(weights_path)
    metadata_path = weights_path.with_suffix(".json")
    metadata_path.write_text(json.dumps(metadata.to_dict(), indent=2) + "\n")
    return metadata_path


def load_model(weights_path: Path, device: torch.device | None = None) -> tuple[ResidualUNet, ModelMetadata]:
    """Load weights and metadata, verifying the weights' SHA-256 against the metadata.

    Raises
    ------
    ModelError
        If a file is missing, the checksum differs or the weights do not fit the architecture.
    """
    metadata_path = weights_path.with_suffix(".json")
    for path in (weights_path, metadata_path):
        if not path.is_file():
            raise ModelError(f"model file not found: {path}", code="model.not_found")
    metadata = ModelMetadata.from_dict(json.loads(metadata_path.read_text()))
    actual = sha256_file(weights_path)
    if metadata.weights_sha256 and actual != metadata.weights_sha256:
        raise ModelError(
            f"SHA-256 of {weights_path.name} is {actual}, but its metadata records "
            f"{metadata.weights_sha256}; the file is corrupt or belongs to another model",
            code="model.checksum",
        )
    network = ResidualUNet(metadata.network)
    try:
        network.load_state_dict(load_file(str(weights_path)))
    except RuntimeError as error:
        raise ModelError(
            f"weights in {weights_path} do not match the architecture: {error}", code="model.architecture"
        ) from error
    network.to(device or torch.device("cpu")).eval()
    return network, metadata

"""Artifacts: the only thing that crosses from training to serving.

An artifact is a folder with ``manifest.json`` and safetensors weights. The manifest holds the format version,
the kind, the architecture config, the classes, the input spec (size, resize, normalisation), measured
figures, how it was trained, and the sha256 of every weights file. Loading verifies every hash before reading
a tensor and never unpickles anything.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.blockdrop import BlockDropModel
from models.policy import PolicyConfig, PolicyNet
from models.resnet import FlatResNet, ResNetConfig

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "model.safetensors"

# kind -> "module:function" building an untrained model from the manifest's architecture.
# Imported lazily so that each model family lives in its own module.
_BUILDERS = {
    "resnet": "models.artifacts:build_blockdrop",
    "blockdrop": "models.artifacts:build_blockdrop",
    "biglittle": "models.biglittle:build_from_architecture",
}


class ArtifactError(ValueError):
    """An artifact folder that cannot be loaded: the message says which file and why."""


@dataclass(frozen=True)
class InputSpec:
    """How to turn an image into the model's input: resize the short side to ``resize`` (if set), centre-crop to
    ``height`` x ``width``, scale to [0, 1], then normalise by ``mean`` / ``std`` (None: leave in [0, 1])."""

    height: int = 32
    width: int = 32
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        mean, std = data.get("mean"), data.get("std")
        return cls(
            int(data["height"]),
            int(data["width"]),
            data.get("resize"),
            tuple(mean) if mean is not None else None,
            tuple(std) if std is not None else None,
        )


@dataclass
class Manifest:
    name: str
    kind: str
    architecture: dict[str, Any]
    classes: list[str]
    input: InputSpec
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    flops: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    # BlockDrop: accuracy and mean FLOPs over a grid of policy thresholds, measured on validation
    calibration: dict[str, Any] = field(default_factory=dict)
    # BlockDrop: the policy's most frequent masks on the training images at the served threshold (hex, most
    # frequent first), which the CUDA engine captures at start-up (``blockdrop record-masks``; models/signatures.py)
    frequent_masks: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    created: str = ""

    @property
    def threshold(self) -> float:
        """The policy threshold the artifact is served at (its ``defaults``), 0.5 where it names none."""
        return float(self.defaults.get("threshold", 0.5))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input"] = asdict(self.input)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"manifest format_version {version!r} is not supported (this code reads {FORMAT_VERSION})"
            )
        try:
            return cls(
                name=data["name"],
                kind=data["kind"],
                architecture=data["architecture"],
                classes=list(data["classes"]),
                input=InputSpec.from_dict(data["input"]),
                metrics=data.get("metrics", {}),
                training=data.get("training", {}),
                flops=data.get("flops", {}),
                defaults=data.get("defaults", {}),
                calibration=data.get("calibration", {}),
                frequent_masks=data.get("frequent_masks", {}),
                files=data.get("files", {}),
                created=data.get("created", ""),
            )
        except KeyError as missing:
            raise ArtifactError(f"{MANIFEST_NAME} lacks the field {missing}") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_blockdrop(architecture: dict[str, Any], input_size: tuple[int, int]) -> BlockDropModel:
    backbone = FlatResNet(ResNetConfig.from_dict(architecture["backbone"]))
    policy_config = architecture.get("policy")
    policy = PolicyNet(PolicyConfig.from_dict(policy_config)) if policy_config else None
    return BlockDropModel(backbone, policy, input_size)


def architecture_of(model: nn.Module) -> dict[str, Any]:
    if isinstance(model, BlockDropModel):
        return {
            "backbone": model.backbone.config.to_dict(),
            "policy": model.policy.config.to_dict() if model.policy is not None else None,
        }
    return model.architecture()  # other families describe themselves


def save_artifact(model: nn.Module, path: str | os.PathLike, manifest: Manifest) -> Manifest:
    """Write ``model``'s weights and ``manifest`` (hashes, architecture and FLOPs filled in) to folder ``path``."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / WEIGHTS_NAME)
    manifest.architecture = architecture_of(model)
    manifest.flops = model.flops_table.to_dict()
    manifest.files = {
        WEIGHTS_NAME: {"sha256": sha256_of(folder / WEIGHTS_NAME), "bytes": (folder / WEIGHTS_NAME).stat().st_size}
    }
    manifest.created = manifest.created or datetime.now(UTC).isoformat(timespec="seconds")
    write_manifest(folder, manifest)
    return manifest


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> None:
    (Path(folder) / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")


def read_manifest(path: str | os.PathLike) -> Manifest:
    manifest_path = Path(path) / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path} not found: not an artifact folder")
    try:
        data = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{manifest_path} is not valid JSON: {error}") from None
    return Manifest.from_dict(data)


def verify_files(folder: Path, manifest: Manifest) -> None:
    if WEIGHTS_NAME not in manifest.files:
        raise ArtifactError(f"{folder / MANIFEST_NAME} lists no {WEIGHTS_NAME}")
    for name, entry in manifest.files.items():
        file = folder / name
        if not file.is_file():
            raise ArtifactError(f"{file} is missing")
        actual = sha256_of(file)
        if actual != entry.get("sha256"):
            raise ArtifactError(
                f"{file} does not match its sha256 in the manifest (the file was changed or is corrupt)"
            )


def verified_manifest(folder: Path) -> Manifest:
    """The manifest of an artifact folder whose files all match it (``ArtifactError`` otherwise)."""
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    return manifest


def load_artifact(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Verify and load an artifact folder; returns the model in eval mode with ``.infer`` and ``.manifest``."""
    folder = Path(path)
    manifest = verified_manifest(folder)
    builder = _BUILDERS.get(manifest.kind)
    if builder is None:
        raise ArtifactError(f"unknown artifact kind {manifest.kind!r}; known: {sorted(_BUILDERS)}")
    module_name, function = builder.split(":")
    model = getattr(importlib.import_module(module_name), function)(manifest.architecture, manifest.input.size)
    try:
        model.load_state_dict(load_file(folder / WEIGHTS_NAME))
    except RuntimeError as error:
        raise ArtifactError(f"{folder / WEIGHTS_NAME} does not fit the manifest's architecture: {error}") from None
    model.manifest = manifest
    return model.to(device).eval()

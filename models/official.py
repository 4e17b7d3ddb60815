"""Import checkpoints of the original BlockDrop repository into artifacts.

Two layouts are read:
- finetuned / curriculum files: a dict with ``resnet`` (backbone, our key names already) and ``agent`` (policy
  ``features.* / logit.* / vnet.*``; older files call it ``net``);
- backbone-only files: ``{'state_dict': ...}`` in torchvision's ``layerN.M.*`` layout, maybe ``module.``-prefixed.
They are Python-2-era pickles, so they are read with ``torch.load(weights_only=True, encoding='latin1')``:
tensors and plain containers only, never arbitrary objects.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from models.artifacts import InputSpec, Manifest, save_artifact
from models.blockdrop import BlockDropModel
from models.classes import CIFAR10_CLASSES, CIFAR100_CLASSES, imagenet_classes
from models.policy import PolicyConfig, PolicyNet
from models.resnet import FlatResNet, ResNetConfig, torchvision_key

# The original code normalised only its R32 CIFAR-10 backbone's input by mean / std; the other CIFAR models
# take raw [0, 1] pixels. ImageNet uses the usual statistics.
_R32_C10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
_R32_C10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class OfficialArch:
    backbone: ResNetConfig
    input: InputSpec

    @property
    def policy(self) -> PolicyConfig:
        family = self.backbone.family
        return PolicyConfig(family, self.backbone.num_blocks, input_downsample=1 if family == "cifar" else 2)

    def classes(self) -> list[str]:
        return {10: CIFAR10_CLASSES, 100: CIFAR100_CLASSES}.get(self.backbone.num_classes) or imagenet_classes()


OFFICIAL_ARCHS = {
    "R32_C10": OfficialArch(ResNetConfig("cifar", 32, 10), InputSpec(32, 32, None, _R32_C10_MEAN, _R32_C10_STD)),
    "R110_C10": OfficialArch(ResNetConfig("cifar", 110, 10), InputSpec(32, 32)),
    "R32_C100": OfficialArch(ResNetConfig("cifar", 32, 100), InputSpec(32, 32)),
    "R110_C100": OfficialArch(ResNetConfig("cifar", 110, 100), InputSpec(32, 32)),
    "R101_ImgNet": OfficialArch(
        ResNetConfig("imagenet", 101, 1000), InputSpec(224, 224, 256, _IMAGENET_MEAN, _IMAGENET_STD)
    ),
}


def read_official(path: str | os.PathLike) -> dict:
    try:
        with warnings.catch_warnings():
            # torch warns that pickle arguments are ignored with weights_only, but its safe unpickler does
            # honour ``encoding``, which Python-2 pickles need.
            warnings.filterwarnings("ignore", message="pickle_load_args only works")
            data = torch.load(path, map_location="cpu", weights_only=True, encoding="latin1")
    except Exception as error:  # torch raises several types for a non-checkpoint or unsafe pickle
        raise ValueError(f"{path}: not a loadable weights-only checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(data).__name__}")
    return data


def backbone_state(data: dict) -> dict[str, Tensor] | None:
    if "resnet" in data:
        return {k.removeprefix("module."): v for k, v in data["resnet"].items()}
    if "state_dict" in data:
        return {torchvision_key(k): v for k, v in data["state_dict"].items()}
    return None


def policy_state(data: dict) -> dict[str, Tensor] | None:
    state = data.get("agent", data.get("net"))
    if state is None:
        return None
    return {
        k.removeprefix("module."): v
        for k, v in state.items()
        if not k.removeprefix("module.").startswith("features.fc")
    }


def import_official(
    checkpoint: str | os.PathLike,
    arch: str,
    out: str | os.PathLike,
    backbone_checkpoint: str | os.PathLike | None = None,
) -> Manifest:
    """Convert ``checkpoint`` (and a separate backbone file, if the checkpoint holds only the agent) to an artifact."""
    if arch not in OFFICIAL_ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; choose one of {', '.join(OFFICIAL_ARCHS)}")
    spec = OFFICIAL_ARCHS[arch]
    data = read_official(checkpoint)
    backbone_weights = backbone_state(data)
    if backbone_weights is None and backbone_checkpoint is not None:
        backbone_weights = backbone_state(read_official(backbone_checkpoint))
    if backbone_weights is None:
        raise ValueError(f"{checkpoint} holds no backbone ('resnet' or 'state_dict'); pass --backbone FILE")
    backbone = FlatResNet(spec.backbone)
    _load_strict(backbone, backbone_weights, "backbone", checkpoint)
    policy_weights = policy_state(data)
    policy = None
    if policy_weights is not None:
        policy = PolicyNet(spec.policy)
        _load_strict(policy, policy_weights, "policy", checkpoint)
    model = BlockDropModel(backbone, policy, spec.input.size)
    manifest = Manifest(
        name=Path(out).name,
        kind="blockdrop" if policy is not None else "resnet",
        architecture={},
        classes=spec.classes(),
        input=spec.input,
        metrics={},
        training={
            "source": "imported from the original BlockDrop repository",
            "arch": arch,
            "file": Path(checkpoint).name,
        },
        defaults={"threshold": 0.5},
    )
    return save_artifact(model, out, manifest)


def _load_strict(module: torch.nn.Module, state: dict[str, Tensor], what: str, source: str | os.PathLike) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{source}: the {what} weights do not fit this architecture: {error}") from None

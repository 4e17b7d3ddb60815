"""Flat ResNets: every stage is an indexable list of blocks, with the stage's shortcut kept apart.

A block returns only its residual branch; the caller adds the shortcut and applies the ReLU. That is what
lets the BlockDrop executor (``models.blockdrop``) run or skip each block per image. Parameter names follow
the original BlockDrop code (``conv1``, ``bn1``, ``blocks.<stage>.<i>.*``, ``ds.<stage>.*``, ``fc``), so its
checkpoints load without renaming; ``torchvision_key`` maps torchvision's ``layerN.M.*`` names onto them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Family = Literal["cifar", "imagenet"]

CIFAR_WIDTHS = (16, 32, 64)
IMAGENET_WIDTHS = (64, 128, 256, 512)
IMAGENET_STAGE_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Residual branch conv3x3-BN-ReLU-conv3x3-BN. ``inner`` is the middle width (narrower once slimmed)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, inner: int | None = None):
        super().__init__()
        inner = inner or out_channels
        self.conv1 = conv3x3(in_channels, inner, stride)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = conv3x3(inner, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class Bottleneck(nn.Module):
    """Residual branch 1x1-3x3-1x1 with the stride on the 3x3 conv (torchvision's "ResNet v1.5")."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


def init_weights(model: nn.Module) -> None:
    """He initialisation for convolutions, BatchNorm as identity."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ZeroPadShortcut(nn.Module):
    """The original BlockDrop CIFAR shortcut: average-pool by the stride, then append zero channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


@dataclass(frozen=True)
class ResNetConfig:
    """Everything needed to rebuild a flat ResNet; stored in artifact manifests.

    ``inner_widths`` (one per block, stage-major) records the middle width of each BasicBlock after channel
    pruning; ``None`` means unpruned.
    """

    family: Family = "cifar"
    depth: int = 32
    num_classes: int = 10
    inner_widths: tuple[int, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.family == "cifar" and (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 20, 32, 56, 110), got {self.depth}")
        if self.family == "imagenet" and self.depth not in IMAGENET_STAGE_BLOCKS:
            raise ValueError(f"ImageNet ResNet depth must be one of {sorted(IMAGENET_STAGE_BLOCKS)}")
        if self.inner_widths is not None:
            object.__setattr__(self, "inner_widths", tuple(int(w) for w in self.inner_widths))
            if len(self.inner_widths) != sum(self.stage_blocks):
                raise ValueError("inner_widths needs one entry per block")

    @property
    def stage_blocks(self) -> tuple[int, ...]:
        if self.family == "cifar":
            return ((self.depth - 2) // 6,) * 3
        return IMAGENET_STAGE_BLOCKS[self.depth]

    @property
    def num_blocks(self) -> int:
        return sum(self.stage_blocks)

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.inner_widths is not None:
            data["inner_widths"] = list(self.inner_widths)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ResNetConfig:
        widths = data.get("inner_widths")
        return cls(
            family=data["family"],
            depth=int(data["depth"]),
            num_classes=int(data["num_classes"]),
            inner_widths=tuple(widths) if widths is not None else None,
        )


class FlatResNet(nn.Module):
    """A ResNet whose stages are ``blocks[stage][i]`` with shortcut ``ds[stage]`` applied at each stage entry.

    ``forward`` runs every block. ``forward_features`` stops before the classifier (used by the policy net).
    """

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        if config.family == "cifar":
            self.conv1 = conv3x3(3, CIFAR_WIDTHS[0])
            self.bn1 = nn.BatchNorm2d(CIFAR_WIDTHS[0])
            self.maxpool: nn.Module = nn.Identity()
            self.ds, self.blocks, out_channels = self._make_cifar_stages(config)
        else:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.ds, self.blocks, out_channels = self._make_imagenet_stages(config)
        self.feature_dim = out_channels
        self.fc = nn.Linear(out_channels, config.num_classes)
        init_weights(self)

    @staticmethod
    def _make_cifar_stages(config: ResNetConfig) -> tuple[nn.ModuleList, nn.ModuleList, int]:
        inner = iter(config.inner_widths or ())
        shortcuts, stages = nn.ModuleList(), nn.ModuleList()
        in_channels = CIFAR_WIDTHS[0]
        for stage, (width, count) in enumerate(zip(CIFAR_WIDTHS, config.stage_blocks)):
            stride = 1 if stage == 0 else 2
            shortcut = (
                nn.Identity() if stride == 1 and in_channels == width else ZeroPadShortcut(in_channels, width, stride)
            )
            blocks = [BasicBlock(in_channels, width, stride, next(inner, None))]
            blocks += [BasicBlock(width, width, 1, next(inner, None)) for _ in range(count - 1)]
            shortcuts.append(shortcut)
            stages.append(nn.ModuleList(blocks))
            in_channels = width
        return shortcuts, stages, in_channels

    @staticmethod
    def _make_imagenet_stages(config: ResNetConfig) -> tuple[nn.ModuleList, nn.ModuleList, int]:
        block_type = BasicBlock if config.depth < 50 else Bottleneck
        expansion = 4 if block_type is Bottleneck else 1
        shortcuts, stages = nn.ModuleList(), nn.ModuleList()
        in_channels = 64
        for stage, (planes, count) in enumerate(zip(IMAGENET_WIDTHS, config.stage_blocks)):
            stride = 1 if stage == 0 else 2
            out_channels = planes * expansion
            needs_projection = stride != 1 or in_channels != out_channels
            shortcuts.append(
                projection_shortcut(in_channels, out_channels, stride) if needs_projection else nn.Identity()
            )
            blocks = [block_type(in_channels, planes, stride)]
            blocks += [block_type(out_channels, planes) for _ in range(count - 1)]
            stages.append(nn.ModuleList(blocks))
            in_channels = out_channels
        return shortcuts, stages, in_channels

    @property
    def num_blocks(self) -> int:
        return self.config.num_blocks

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(F.relu(self.bn1(self.conv1(x))))

    def head(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(x))

    @staticmethod
    def pool(x: Tensor) -> Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for shortcut, stage in zip(self.ds, self.blocks):
            for i, block in enumerate(stage):
                residual = shortcut(x) if i == 0 else x
                x = F.relu(residual + block(x))
        return self.pool(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


_TORCHVISION_LAYER = re.compile(r"^layer(\d+)\.(\d+)\.(.*)$")


def torchvision_key(key: str) -> str:
    """Map a torchvision ResNet parameter name onto ``FlatResNet``'s.

    ``layer{s}.{i}.downsample.*`` -> ``ds.{s-1}.*`` and ``layer{s}.{i}.*`` -> ``blocks.{s-1}.{i}.*``;
    ``conv1``, ``bn1`` and ``fc`` keep their names. A leading ``module.`` (DataParallel) is dropped.
    """
    key = key.removeprefix("module.")
    match = _TORCHVISION_LAYER.match(key)
    if not match:
        return key
    stage, index, rest = int(match[1]) - 1, match[2], match[3]
    if rest.startswith("downsample."):
        return f"ds.{stage}.{rest.removeprefix('downsample.')}"
    return f"blocks.{stage}.{index}.{rest}"


def load_torchvision_state_dict(model: FlatResNet, state_dict: dict[str, Tensor]) -> None:
    """Load a torchvision ``resnet50`` / ``resnet101`` (or ``layerN.M``-style CIFAR) state_dict, strictly."""
    model.load_state_dict({torchvision_key(k): v for k, v in state_dict.items()})


def cifar_resnet(depth: int, num_classes: int = 10) -> FlatResNet:
    return FlatResNet(ResNetConfig("cifar", depth, num_classes))


def imagenet_resnet(depth: int, num_classes: int = 1000) -> FlatResNet:
    return FlatResNet(ResNetConfig("imagenet", depth, num_classes))

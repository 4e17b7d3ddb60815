"""Big-Little Net (Chen et al., ICLR 2019): multi-scale ResNets built from Big-Little modules.

A bL-module replaces a stage of K residual blocks by two branches over the same input:
- the **big** branch: K - 1 blocks at full width that run at half resolution (its first block has stride 2),
  upsampled back (bilinear) at the end;
- the **little** branch: K / beta - 1 blocks (at least one) at width / alpha that stay at full resolution,
  then a 1x1 conv + BN to full width;
- the two are added and ReLU'd, and a **fusion** block carries the stage's stride.
alpha = 2 and beta = 4 by default, as in the paper.

The paper defines ImageNet models only. The CIFAR bL-ResNet here follows the same rules on the CIFAR ResNet
(3 stages of widths 16 / 32 / 64, BasicBlocks, ``blocks_per_stage`` blocks each): every stage becomes a
bL-module; the little branch always keeps at least one block; a shortcut average-pools (3x3) where its block
strides and adds a 1x1 conv + BN where the width changes, as the reference implementation does.
``imagenet_bl_resnet50`` builds the paper's bL-ResNet-50 (alpha = 2, beta = 4) without weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from models.blockdrop import InferenceResult
from models.flops import FlopsTable
from models.resnet import BasicBlock, Bottleneck, conv1x1, init_weights


class Residual(nn.Module):
    """A residual block with its own shortcut: identity, or (3x3 average pooling where it strides, then 1x1 conv + BN
    where the width changes), as in the reference bL-ResNet."""

    def __init__(self, block: type[nn.Module], in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        if block is Bottleneck:
            self.branch = Bottleneck(in_channels, out_channels // Bottleneck.expansion, stride)
        else:
            self.branch = BasicBlock(in_channels, out_channels, stride)
        shortcut: list[nn.Module] = []
        if stride != 1:
            shortcut.append(nn.AvgPool2d(3, stride=stride, padding=1))
        if in_channels != out_channels:
            shortcut += [conv1x1(in_channels, out_channels), nn.BatchNorm2d(out_channels)]
        self.shortcut = nn.Sequential(*shortcut)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.shortcut(x) + self.branch(x))


def residual_stack(
    block: type[nn.Module], in_channels: int, out_channels: int, count: int, stride: int = 1
) -> nn.Sequential:
    layers = [Residual(block, in_channels, out_channels, stride)]
    layers += [Residual(block, out_channels, out_channels) for _ in range(count - 1)]
    return nn.Sequential(*layers)


class BigLittleModule(nn.Module):
    def __init__(
        self,
        block: type[nn.Module],
        in_channels: int,
        out_channels: int,
        blocks: int,
        alpha: int,
        beta: int,
        stride: int,
    ):
        super().__init__()
        self.big = residual_stack(block, in_channels, out_channels, max(blocks - 1, 1), stride=2)
        little_channels = out_channels // alpha
        self.little = residual_stack(block, in_channels, little_channels, max(blocks // beta - 1, 1))
        self.little_expand = nn.Sequential(conv1x1(little_channels, out_channels), nn.BatchNorm2d(out_channels))
        self.fusion = Residual(block, out_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        big = self.big(x)
        little = self.little_expand(self.little(x))
        big = F.interpolate(big, size=little.shape[-2:], mode="bilinear", align_corners=False)
        return self.fusion(F.relu(big + little))


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class BigLittleStem(nn.Module):
    """The ImageNet bL-ResNet stem: a 7x7 stride-2 conv, then a small big-little pair in place of the max-pool."""

    def __init__(self, alpha: int, width: int = 64):
        super().__init__()
        self.conv = conv_bn(3, width, 7, stride=2)
        self.big = conv_bn(width, width, 3, stride=2, relu=False)
        self.little = nn.Sequential(
            conv_bn(width, width // alpha, 3),
            conv_bn(width // alpha, width // alpha, 3, 2),
            conv_bn(width // alpha, width, 1, relu=False),
        )
        self.merge = conv_bn(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return self.merge(F.relu(self.big(x) + self.little(x)))


@dataclass(frozen=True)
class BigLittleConfig:
    family: str = "cifar"
    blocks_per_stage: tuple[int, ...] = (5, 5, 5)
    alpha: int = 2
    beta: int = 4
    num_classes: int = 10
    # 1 keeps the last stage a plain ResNet stage: the ImageNet model keeps its 7x7 stage plain, where half
    # resolution would leave too little to see; a CIFAR model may do the same with its 8x8 stage
    plain_stages: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["blocks_per_stage"] = list(self.blocks_per_stage)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BigLittleConfig:
        return cls(
            data["family"],
            tuple(data["blocks_per_stage"]),
            int(data["alpha"]),
            int(data["beta"]),
            int(data["num_classes"]),
            # artifacts written before the field existed: the CIFAR ones had none, the ImageNet model one
            int(data.get("plain_stages", 1 if data["family"] == "imagenet" else 0)),
        )


class BigLittleNet(nn.Module):
    """A bL-ResNet. Like every served model it answers ``infer``; its mask is all ones (nothing is skipped)."""

    def __init__(self, config: BigLittleConfig, input_size: tuple[int, int] = (32, 32)):
        super().__init__()
        self.config = config
        self.input_size = input_size
        # the fusion block ends each bL stage and carries its stride, so each stage's branches run at its input
        # resolution (big at half of it); the last ``plain_stages`` stages are plain ResNet stages
        if config.family == "cifar":
            self.stem: nn.Module = conv_bn(3, 16, 3)
            widths, block, in_channels, strides = (16, 32, 64), BasicBlock, 16, (2, 2, 1)
        elif config.family == "imagenet":
            self.stem = BigLittleStem(config.alpha)
            widths, block, in_channels, strides = (256, 512, 1024, 2048), Bottleneck, 64, (2, 2, 1, 2)
        else:
            raise ValueError(f"unknown bL-ResNet family {config.family!r}")
        if len(config.blocks_per_stage) != len(widths):
            raise ValueError(f"a {config.family} bL-ResNet has {len(widths)} stages")
        # only the last stage may stay plain: the stages before it hand on a map their fusion block has already
        # strided, so a plain one there would run at half a ResNet's resolution
        if config.plain_stages not in (0, 1):
            raise ValueError(f"plain_stages is 0 or 1 (only the last stage may stay plain), not {config.plain_stages}")
        stages: list[nn.Module] = []
        bl_stages = len(widths) - config.plain_stages
        for index, (width, count, stride) in enumerate(zip(widths, config.blocks_per_stage, strides, strict=True)):
            if index < bl_stages:
                stages.append(BigLittleModule(block, in_channels, width, count, config.alpha, config.beta, stride))
            else:
                stages.append(residual_stack(block, in_channels, width, count, stride))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_channels, config.num_classes)
        init_weights(self)
        self.flops_table = measure_biglittle_flops(self, input_size)
        self.manifest: Any = None

    @property
    def num_blocks(self) -> int:
        return len(self.flops_table.blocks)

    @property
    def stage_blocks(self) -> tuple[int, ...]:
        """Residual blocks per stage (a bL stage counts its big, little and fusion blocks), in mask order."""
        return tuple(sum(isinstance(m, Residual) for m in stage.modules()) for stage in self.stages)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    @torch.no_grad()
    def infer(
        self,
        x: Tensor,
        threshold: float = 0.5,
        mode: Any = None,
        k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> InferenceResult:
        if mode is not None and str(getattr(mode, "value", mode)) != "full":
            raise ValueError("a Big-Little network has no policy; it only runs in mode 'full'")
        n = x.shape[0]
        keep = torch.ones(n, self.num_blocks, dtype=torch.bool, device=x.device)
        return InferenceResult(self(x), keep, torch.full((n,), self.flops_table.full, device=x.device))

    def architecture(self) -> dict[str, Any]:
        return {"biglittle": self.config.to_dict()}


def imagenet_bl_resnet50(num_classes: int = 1000) -> BigLittleNet:
    """The paper's bL-ResNet-50 (alpha = 2, beta = 4), without weights."""
    config = BigLittleConfig("imagenet", (3, 4, 6, 3), 2, 4, num_classes, plain_stages=1)
    return BigLittleNet(config, input_size=(224, 224))


def residual_blocks(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, Residual)]


@torch.no_grad()
def measure_biglittle_flops(model: BigLittleNet, input_size: tuple[int, int]) -> FlopsTable:
    """Total FLOPs on one image, with each residual block's share (the rest — stem, merges, head — is base)."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, *input_size))
    finally:
        model.train(was_training)
    per_module = counter.get_flop_counts()
    total = int(counter.get_total_flops())
    blocks = tuple(int(sum(per_module.get(f"BigLittleNet.{name}", {}).values())) for name in residual_blocks(model))
    return FlopsTable(base=total - sum(blocks), blocks=blocks, policy=0)


def build_from_architecture(architecture: dict[str, Any], input_size: tuple[int, int]) -> BigLittleNet:
    return BigLittleNet(BigLittleConfig.from_dict(architecture["biglittle"]), input_size)

"""FLOPs per part of a flat ResNet, measured once with ``torch.utils.flop_counter.FlopCounterMode``.

Rule: one multiply-add is 2 FLOPs, and only convolutions and matrix products count (FlopCounterMode's rule);
BatchNorm, ReLU, pooling and the residual additions are not counted. A full CIFAR ResNet-110 is 5.06e8 FLOPs
by this rule, ResNet-32 1.38e8. An image's figure is the always-run part (stem, stage shortcuts, head) plus
the blocks its mask keeps, plus the policy when a policy decided the mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from models.resnet import FlatResNet


@dataclass(frozen=True)
class FlopsTable:
    base: int  # stem + stage shortcuts + head: runs for every image
    blocks: tuple[int, ...]  # each block's residual branch, stage-major
    policy: int  # the policy network; 0 when there is none

    @property
    def full(self) -> int:
        """The whole backbone, every block, no policy."""
        return self.base + sum(self.blocks)

    def per_image(self, keep_mask: Tensor, include_policy: bool) -> Tensor:
        """FLOPs for each row of a [N, K] keep mask, as int64 [N]."""
        block_flops = torch.tensor(self.blocks, dtype=torch.int64, device=keep_mask.device)
        executed = (keep_mask.to(torch.int64) * block_flops).sum(1) + self.base
        return executed + self.policy if include_policy else executed

    def to_dict(self) -> dict:
        return {"full": self.full, "base": self.base, "policy": self.policy, "blocks": list(self.blocks)}


def count_flops(fn: Callable[..., Tensor], *args: Tensor) -> tuple[int, Tensor]:
    """FLOPs of one call, and its output."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return int(counter.get_total_flops()), out


@torch.no_grad()
def measure_flops(backbone: FlatResNet, input_size: tuple[int, int], policy: nn.Module | None = None) -> FlopsTable:
    """Count each part of ``backbone`` (and ``policy``) on one image of ``input_size``."""
    modules = [m for m in (backbone, policy) if m is not None]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        image = torch.zeros(1, 3, *input_size)
        base, x = count_flops(backbone.stem, image)
        blocks = []
        for shortcut, stage in zip(backbone.ds, backbone.blocks):
            for i, block in enumerate(stage):
                shortcut_flops, residual = count_flops(shortcut, x) if i == 0 else (0, x)
                block_flops, branch = count_flops(block, x)
                base += shortcut_flops
                blocks.append(block_flops)
                x = F.relu(residual + branch)
        head_flops, _ = count_flops(backbone.head, x)
        policy_flops = count_flops(policy, image)[0] if policy is not None else 0
    finally:
        for m, training in zip(modules, was_training):
            m.train(training)
    return FlopsTable(base=base + head_flops, blocks=tuple(blocks), policy=policy_flops)

"""Stochastic depth per image: a backbone trained to tolerate dropped blocks before a policy learns to drop them.

A plain ResNet-32 falls from 88 % to 32 % on validation when each image runs 10 random blocks of its 15; the
BlockDrop policy can only pick among masks the backbone tolerates. During training every image draws its own
keep-probability uniformly from [min_keep, 1] and keeps each block with it, so the network sees the full
depth as well as the shallow masks a policy will choose. The dropped blocks really are skipped
(``models.blockdrop.run_backbone``), so the stage costs less than full training. In eval mode it is the
plain network.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.blockdrop import run_backbone
from models.resnet import FlatResNet


def random_keep_mask(n: int, num_blocks: int, min_keep: float) -> Tensor:
    """[n, num_blocks] bool, on the CPU: row i keeps each block with its own probability drawn from U[min_keep, 1]."""
    keep_probability = torch.empty(n, 1).uniform_(min_keep, 1.0)
    return torch.rand(n, num_blocks) < keep_probability


class RandomBlockDrop(nn.Module):
    def __init__(self, backbone: FlatResNet, min_keep: float):
        super().__init__()
        if not 0.0 < min_keep <= 1.0:
            raise ValueError(f"min_keep must be in (0, 1], got {min_keep}")
        self.backbone = backbone
        self.min_keep = min_keep

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self.backbone(x)
        # on the CPU whatever the device: run_backbone reads the mask on the host, so a GPU run never waits
        keep_mask = random_keep_mask(x.shape[0], self.backbone.num_blocks, self.min_keep)
        return run_backbone(self.backbone, x, keep_mask)

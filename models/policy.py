"""Policy networks: a small ResNet that looks at the image and returns one keep-probability per block.

CIFAR inputs use ResNet-8 features, 224x224 inputs ResNet-10 features on the half-resolution image (the
paper's choices). ``input_downsample`` average-pools the image first; on CIFAR a factor of 2 makes the policy
4x cheaper. Parameter names match the original code (``features.*``, ``logit.*``, ``vnet.*``); the value head
``vnet`` is kept only so that its checkpoints load strictly — training here uses a self-critical baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.resnet import Family, FlatResNet, ResNetConfig


@dataclass(frozen=True)
class PolicyConfig:
    family: Family = "cifar"
    num_blocks: int = 15
    input_downsample: int = 1

    @property
    def feature_depth(self) -> int:
        return 8 if self.family == "cifar" else 10

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PolicyConfig:
        return cls(data["family"], int(data["num_blocks"]), int(data.get("input_downsample", 1)))


class PolicyNet(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        self.features = FlatResNet(ResNetConfig(config.family, config.feature_depth, num_classes=1))
        self.features.fc = nn.Identity()  # the policy has its own heads
        self.logit = nn.Linear(self.features.feature_dim, config.num_blocks)
        self.vnet = nn.Linear(self.features.feature_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Keep-probabilities [N, num_blocks]."""
        if self.config.input_downsample > 1:
            x = F.avg_pool2d(x, self.config.input_downsample)
        return torch.sigmoid(self.logit(self.features.forward_features(x)))

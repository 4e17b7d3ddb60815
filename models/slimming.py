"""Network Slimming (Liu et al., ICCV 2017) for the flat CIFAR ResNet: channel pruning by BatchNorm scale.

As the paper does for ResNets, only the channels *inside* each residual block are pruned — the output of each
block's first conv / BN (``bn1``) and the matching input of its second conv — so the residual stream keeps its
width and the stage shortcuts stay valid. Training adds the L1 subgradient λ·sign(γ) to those BN scales; a global
threshold over all of them at a given percent picks the channels to drop; ``prune`` then builds a physically
narrower network (per-block widths recorded in the config), never a mask. A floor keeps at least
``min_channels`` per block, so no layer is pruned to zero width (where the reference implementation crashes).

Hand-written surgery rather than Torch-Pruning: the pruned set is a single BN per block with one producer and
one consumer conv, so the surgery is a dozen lines and the result is an ordinary ``FlatResNet``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from models.resnet import BasicBlock, FlatResNet, ResNetConfig


def prunable_batchnorms(model: FlatResNet) -> list[nn.BatchNorm2d]:
    """The BN after each block's first conv: the channels that can go without touching the residual stream."""
    blocks = [block for stage in model.blocks for block in stage]
    if not all(isinstance(block, BasicBlock) for block in blocks):
        raise ValueError("channel slimming is implemented for BasicBlock (CIFAR) ResNets")
    return [block.bn1 for block in blocks]


def add_sparsity_subgradient(model: FlatResNet, penalty: float) -> None:
    """After backward: add the L1 subgradient ``penalty * sign(gamma)`` to every prunable BN scale."""
    for bn in prunable_batchnorms(model):
        if bn.weight.grad is not None:
            bn.weight.grad.add_(torch.sign(bn.weight.detach()), alpha=penalty)


def global_threshold(model: FlatResNet, percent: float) -> float:
    """The |gamma| below which ``percent`` of all prunable channels fall."""
    if not 0.0 <= percent < 1.0:
        raise ValueError(f"percent must be in [0, 1), got {percent}")
    scales = torch.cat([bn.weight.detach().abs() for bn in prunable_batchnorms(model)])
    if percent == 0.0:
        return -1.0
    return float(torch.sort(scales).values[int(len(scales) * percent) - 1])


def select_channels(model: FlatResNet, percent: float, min_channels: int = 2) -> list[Tensor]:
    """Per block, a bool mask of inner channels to keep: |gamma| above the global threshold, and at least the
    ``min_channels`` largest even where the threshold would remove them all."""
    threshold = global_threshold(model, percent)
    keep_masks = []
    for bn in prunable_batchnorms(model):
        scales = bn.weight.detach().abs()
        keep = scales > threshold
        floor = min(min_channels, len(scales))
        if int(keep.sum()) < floor:
            keep = torch.zeros_like(keep)
            keep[scales.topk(floor).indices] = True
        keep_masks.append(keep)
    return keep_masks


def mask_channels(model: FlatResNet, keep_masks: list[Tensor]) -> FlatResNet:
    """A copy of ``model`` with the dropped channels' gamma and beta zeroed: what pruning removes, as a mask."""
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for bn, keep in zip(prunable_batchnorms(masked), keep_masks, strict=True):
            bn.weight[~keep] = 0.0
            bn.bias[~keep] = 0.0
    return masked


def prune(model: FlatResNet, keep_masks: list[Tensor]) -> FlatResNet:
    """A physically narrower copy of ``model`` keeping only the masked-in inner channels of each block."""
    widths = tuple(int(keep.sum()) for keep in keep_masks)
    config = ResNetConfig(model.config.family, model.config.depth, model.config.num_classes, inner_widths=widths)
    pruned = FlatResNet(config)
    state = model.state_dict()
    new_state = pruned.state_dict()
    block_names = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    kept_index = {name: keep.nonzero().squeeze(1) for name, keep in zip(block_names, keep_masks, strict=True)}
    for key in new_state:
        value = state[key]
        block = key.rsplit(".", 2)[0]
        if block in kept_index:
            index = kept_index[block]
            if key.endswith("conv1.weight") or (".bn1." in key and value.dim() == 1):
                value = value[index]
            elif key.endswith("conv2.weight"):
                value = value[:, index]
        new_state[key] = value.clone()
    pruned.load_state_dict(new_state)
    return pruned.train(model.training)


def inner_channel_count(model: FlatResNet) -> int:
    return sum(bn.num_features for bn in prunable_batchnorms(model))

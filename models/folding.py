"""Conv-BN folding for inference: a BatchNorm in eval mode is an affine map per channel, so it can be merged into
the convolution before it (``torch.nn.utils.fusion.fuse_conv_bn_eval``). On CIFAR-sized inputs the time follows
the number of operators more than the FLOPs, and folding removes one operator per convolution."""

from __future__ import annotations

import itertools
import re

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONV_NAME = re.compile(r"^conv(\d*)$")


def _fold_pair(conv: nn.Module, bn: nn.Module) -> nn.Conv2d | None:
    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.out_channels == bn.num_features:
        return fuse_conv_bn_eval(conv, bn)
    return None


def _fold_children(module: nn.Module) -> int:
    """Fold the pairs directly inside ``module``: neighbours in a Sequential, and ``convN`` / ``bnN`` attributes
    (the blocks' convention: ``bnN`` is applied to ``convN``'s output and to nothing else)."""
    folded = 0
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in itertools.pairwise(names):
            fused = _fold_pair(module._modules[first], module._modules[second])
            if fused is not None:
                module._modules[first], module._modules[second] = fused, nn.Identity()
                folded += 1
        return folded
    for name, child in list(module._modules.items()):
        match = _CONV_NAME.match(name)
        bn_name = f"bn{match.group(1)}" if match else None
        if bn_name is None or bn_name not in module._modules:
            continue
        fused = _fold_pair(child, module._modules[bn_name])
        if fused is not None:
            setattr(module, name, fused)
            setattr(module, bn_name, nn.Identity())
            folded += 1
    return folded


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every Conv-BN pair of ``model`` in place (it must be in eval mode: training would need the batch
    statistics); returns how many were folded."""
    if any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        raise ValueError("fold_batchnorm needs a model in eval mode")
    return sum(_fold_children(module) for module in list(model.modules()))

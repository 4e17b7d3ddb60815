"""Conv-BN folding gives the unfolded model's logits (within 1e-4) and the same masks, on every architecture the
service serves and on every shipped checkpoint."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from models import load_artifact
from models.biglittle import BigLittleConfig, BigLittleNet
from models.blockdrop import BlockDropModel
from models.folding import fold_batchnorm
from models.policy import PolicyConfig, PolicyNet
from models.resnet import cifar_resnet, imagenet_resnet
from models.slimming import prune, select_channels
from tests.conftest import randomize_batchnorm

CHECKPOINTS = Path(__file__).resolve().parents[2] / "models" / "checkpoints"


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _tiny_models() -> dict[str, tuple[nn.Module, int]]:
    """name -> (model in eval mode with random BN statistics, input side)."""
    torch.manual_seed(0)
    full = randomize_batchnorm(cifar_resnet(8), seed=2)
    return {
        "cifar-resnet": (BlockDropModel(full), 32),
        "blockdrop": (
            BlockDropModel(
                randomize_batchnorm(cifar_resnet(8), 1), randomize_batchnorm(PolicyNet(PolicyConfig("cifar", 3)), 3)
            ),
            32,
        ),
        "slimmed": (BlockDropModel(prune(full, select_channels(full, 0.5)).eval()), 32),
        "biglittle": (randomize_batchnorm(BigLittleNet(BigLittleConfig("cifar", (2, 2, 2), plain_stages=1)), 4), 32),
        "imagenet-bottleneck": (BlockDropModel(randomize_batchnorm(imagenet_resnet(50, num_classes=10), 5)), 64),
    }


def _assert_same_outputs(model: nn.Module, side: int) -> None:
    x = torch.randn(6, 3, side, side, generator=torch.Generator().manual_seed(7))
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) > 0
    assert _batchnorms(folded) == 0, "a BatchNorm was left unfolded"
    with torch.inference_mode():
        if isinstance(model, BlockDropModel):
            mode = "policy" if model.policy is not None else "full"
            before, after = model.infer(x, mode=mode), folded.infer(x, mode=mode)
            assert torch.equal(before.keep_mask, after.keep_mask) and torch.equal(before.flops, after.flops)
            before, after = before.logits, after.logits
        else:
            before, after = model(x), folded(x)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(_tiny_models()))
def test_folding_keeps_the_logits_of_every_architecture(name):
    model, side = _tiny_models()[name]
    _assert_same_outputs(model.eval(), side)


@pytest.mark.parametrize("folder", sorted(p.name for p in CHECKPOINTS.iterdir() if (p / "manifest.json").exists()))
def test_folding_keeps_the_logits_of_every_shipped_checkpoint(folder):
    _assert_same_outputs(load_artifact(CHECKPOINTS / folder).eval(), 32)


def test_folding_refuses_a_model_in_training_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(cifar_resnet(8).train())

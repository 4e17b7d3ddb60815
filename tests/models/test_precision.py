"""The precision setting: ``auto`` by device, the backbone cast and the policy never."""

from __future__ import annotations

import pytest
import torch

from models.blockdrop import BlockDropModel
from models.policy import PolicyConfig, PolicyNet
from models.precision import apply_precision, precision_of, resolve_precision
from models.resnet import cifar_resnet


def test_auto_is_bf16_only_on_a_gpu_that_computes_it_natively(monkeypatch):
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert resolve_precision("auto", "cuda") == "bf16" and resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", "cuda") == "fp32"  # emulated bf16 is no speed-up
    assert resolve_precision("fp16", "cpu") == "fp16"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
        resolve_precision("int8", "cpu")


def test_the_backbone_changes_precision_and_the_policy_stays_fp32():
    model = BlockDropModel(cifar_resnet(8), PolicyNet(PolicyConfig("cifar", 3))).eval()
    assert apply_precision(model, "fp16") == torch.float16 and precision_of(model) == "fp16"
    assert all(p.dtype == torch.float16 for p in model.backbone.parameters())
    assert all(p.dtype == torch.float32 for p in model.policy.parameters())
    apply_precision(model, "fp32")
    assert precision_of(model) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        apply_precision(model, "auto")

"""The served variant: the memory layout it runs in on CPU, and that the layout changes no answer."""

from __future__ import annotations

import pytest
import torch

from service.config import VariantSettings
from service.variants import load_variant


@pytest.mark.parametrize(
    "name, mode", [("tiny-blockdrop", "blockdrop"), ("tiny-resnet", "full"), ("tiny-biglittle", "full")]
)
def test_cpu_variants_run_channels_last_with_the_same_answers(artifacts, name, mode):
    settings = VariantSettings(name="v", artifact=artifacts[name], mode=mode)
    served = load_variant(settings, "cpu")
    plain = load_variant(settings, "cpu", channels_last=False)
    assert served.memory_format == torch.channels_last and plain.memory_format == torch.contiguous_format
    conv = next(m for m in served.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    batch = torch.randn(9, 3, 32, 32)
    a, b = served.infer(batch), plain.infer(batch)
    assert torch.allclose(a.logits, b.logits, atol=1e-5, rtol=0)
    assert torch.equal(a.keep_mask, b.keep_mask) and torch.equal(a.flops, b.flops)

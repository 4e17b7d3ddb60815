import pytest
import torch

from models import load_artifact, save_artifact
from models.artifacts import InputSpec, Manifest
from models.blockdrop import BlockDropModel
from models.flops import measure_flops
from models.resnet import cifar_resnet
from models.slimming import (
    add_sparsity_subgradient,
    inner_channel_count,
    mask_channels,
    prunable_batchnorms,
    prune,
    select_channels,
)
from tests.conftest import randomize_batchnorm


@pytest.fixture
def model():
    return randomize_batchnorm(cifar_resnet(20), seed=4)


@pytest.mark.parametrize("percent", [0.0, 0.4, 0.6])
def test_masked_and_physically_pruned_networks_agree(model, percent):
    keep = select_channels(model, percent)
    pruned = prune(model, keep).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(mask_channels(model, keep)(x), pruned(x), atol=1e-5)
    removed = 1 - inner_channel_count(pruned) / inner_channel_count(model)
    assert abs(removed - percent) < 0.02
    assert pruned.config.inner_widths == tuple(int(k.sum()) for k in keep)


def test_pruning_cuts_flops_in_proportion(model):
    full = measure_flops(model, (32, 32)).full
    pruned = prune(model, select_channels(model, 0.4))
    assert measure_flops(pruned, (32, 32)).full < 0.7 * full


def test_no_layer_is_pruned_to_zero_width_even_at_extreme_percents(model):
    with torch.no_grad():
        for bn in prunable_batchnorms(model)[:3]:
            bn.weight.mul_(1e-6)  # three blocks whose every channel falls under any threshold
    keep = select_channels(model, 0.95, min_channels=2)
    assert min(int(k.sum()) for k in keep) == 2
    pruned = prune(model, keep).eval()
    assert pruned(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_sparsity_subgradient_is_added_to_the_prunable_scales_only(model):
    model.train()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    before = {id(p): p.grad.clone() for p in model.parameters()}
    add_sparsity_subgradient(model, 1e-2)
    prunable = {id(bn.weight) for bn in prunable_batchnorms(model)}
    for p in model.parameters():
        delta = p.grad - before[id(p)]
        if id(p) in prunable:
            assert torch.allclose(delta, 1e-2 * torch.sign(p.detach()))
        else:
            assert torch.count_nonzero(delta) == 0


def test_pruned_artifact_round_trips(model, tmp_path):
    pruned = prune(model, select_channels(model, 0.5)).eval()
    manifest = Manifest(
        name="slim", kind="resnet", architecture={}, classes=[str(i) for i in range(10)], input=InputSpec(32, 32)
    )
    save_artifact(BlockDropModel(pruned), tmp_path / "slim", manifest)
    loaded = load_artifact(tmp_path / "slim")
    assert loaded.manifest.architecture["backbone"]["inner_widths"] == list(pruned.config.inner_widths)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.infer(x).logits, pruned(x), atol=1e-6)

import pytest
import torch

from models.blockdrop import BlockDropModel, Mode, kept_rows, run_backbone, run_backbone_masked
from models.policy import PolicyConfig, PolicyNet
from models.resnet import cifar_resnet, imagenet_resnet
from tests.conftest import randomize_batchnorm


def _random_mask(n: int, k: int, seed: int) -> torch.Tensor:
    mask = torch.rand(n, k, generator=torch.Generator().manual_seed(seed)) < 0.5
    mask[0] = True  # one image keeps everything
    mask[1] = False  # one keeps nothing
    return mask


def test_all_ones_mask_equals_plain_forward():
    backbone = randomize_batchnorm(cifar_resnet(32))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        executed = run_backbone(backbone, x, torch.ones(4, 15, dtype=torch.bool))
        assert (executed - backbone(x)).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "backbone, size, n",
    [(lambda: cifar_resnet(32), 32, 6), (lambda: cifar_resnet(110), 32, 5), (lambda: imagenet_resnet(50), 224, 3)],
    ids=["resnet32", "resnet110", "resnet50-224"],
)
def test_batched_gather_scatter_equals_each_image_alone(backbone, size, n):
    backbone = randomize_batchnorm(backbone())
    x = torch.randn(n, 3, size, size)
    mask = _random_mask(n, backbone.num_blocks, seed=n)
    with torch.no_grad():
        batched = run_backbone(backbone, x, mask)
        alone = torch.cat([run_backbone(backbone, x[i : i + 1], mask[i : i + 1]) for i in range(n)])
        reference = run_backbone_masked(backbone, x, mask)
    assert torch.allclose(batched, alone, atol=1e-5, rtol=0)
    assert torch.allclose(batched, reference, atol=1e-5, rtol=0)


def test_kept_rows_lists_each_blocks_rows_and_a_wrong_mask_is_refused():
    mask = torch.tensor([[True, False, True], [False, False, True], [True, False, True]])
    rows = kept_rows(mask, torch.device("cpu"))
    assert [r.tolist() for r in rows] == [[0, 2], [], [0, 1, 2]]
    backbone = cifar_resnet(8)
    with pytest.raises(ValueError, match=r"keep_mask must be \[2, 3\]"):
        run_backbone(backbone, torch.randn(2, 3, 32, 32), torch.ones(2, 4, dtype=torch.bool))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_a_mask_from_either_side_gives_the_cpu_result():
    backbone = randomize_batchnorm(cifar_resnet(32)).eval()
    x, mask = torch.randn(6, 3, 32, 32), _random_mask(6, 15, seed=3)
    with torch.no_grad():
        expected = run_backbone(backbone, x, mask)
        backbone.cuda()
        for device_mask in (mask, mask.cuda()):
            got = run_backbone(backbone, x.cuda(), device_mask).cpu()
            assert torch.allclose(got, expected, atol=1e-4, rtol=0)


def test_dropped_block_passes_the_stage_shortcut_on():
    backbone = randomize_batchnorm(cifar_resnet(8))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = run_backbone(backbone, x, torch.zeros(1, 3, dtype=torch.bool))
        features = backbone.stem(x)
        for shortcut in backbone.ds:
            features = shortcut(features)
        assert torch.allclose(out, backbone.head(features), atol=1e-6)


def _blockdrop(depth: int = 32) -> BlockDropModel:
    backbone = randomize_batchnorm(cifar_resnet(depth))
    policy = randomize_batchnorm(PolicyNet(PolicyConfig("cifar", backbone.num_blocks)))
    return BlockDropModel(backbone, policy).eval()


def test_policy_mode_keeps_blocks_whose_probability_reaches_the_threshold():
    model = _blockdrop()
    x = torch.randn(5, 3, 32, 32)
    probabilities = model.policy(x)
    for threshold in (0.3, 0.5, 0.7):
        result = model.infer(x, threshold=threshold)
        assert torch.equal(result.keep_mask, probabilities >= threshold)
        assert result.logits.shape == (5, 10)
    assert model.infer(x, threshold=0.0).keep_mask.all()
    assert not model.infer(x, threshold=1.01).keep_mask.any()


def test_baseline_modes():
    model = _blockdrop()
    x = torch.randn(4, 3, 32, 32)
    assert model.infer(x, mode=Mode.FULL).keep_mask.all()
    first = model.infer(x, mode="first_k", k=6).keep_mask
    assert first[:, :6].all() and not first[:, 6:].any()
    generator = torch.Generator().manual_seed(0)
    random = model.infer(x, mode="random_k", k=6, generator=generator).keep_mask
    assert (random.sum(1) == 6).all()
    assert len({tuple(row.tolist()) for row in random}) > 1
    with pytest.raises(ValueError, match="needs k"):
        model.infer(x, mode="first_k")


def test_plain_resnet_defaults_to_full_and_refuses_policy_mode():
    model = BlockDropModel(randomize_batchnorm(cifar_resnet(8))).eval()
    x = torch.randn(2, 3, 32, 32)
    result = model.infer(x)
    assert result.keep_mask.all()
    assert torch.equal(result.flops, torch.full((2,), model.flops_table.full))
    with pytest.raises(ValueError, match="no policy"):
        model.infer(x, mode="policy")


def test_executor_is_differentiable_for_joint_finetuning():
    backbone = cifar_resnet(8).train()
    x = torch.randn(4, 3, 32, 32)
    mask = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    run_backbone(backbone, x, mask).sum().backward()
    assert backbone.blocks[0][0].conv1.weight.grad is not None


def test_channels_last_batch_gives_the_same_logits_and_keeps_its_layout():
    from models.blockdrop import gather_rows

    backbone = randomize_batchnorm(cifar_resnet(20)).eval()
    x = torch.randn(7, 3, 32, 32)
    mask = _random_mask(7, backbone.num_blocks, seed=3)
    with torch.no_grad():
        plain = run_backbone(backbone, x, mask)
        backbone.to(memory_format=torch.channels_last)
        channels_last = run_backbone(backbone, x.contiguous(memory_format=torch.channels_last), mask)
    assert torch.allclose(plain, channels_last, atol=1e-5, rtol=0)
    features = torch.randn(6, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    rows = torch.tensor([0, 2, 5])
    gathered = gather_rows(features, rows)
    assert gathered.is_contiguous(memory_format=torch.channels_last) and torch.equal(gathered, features[rows])
    assert gather_rows(torch.randn(6, 16, 8, 8), rows).is_contiguous()  # NCHW stays NCHW

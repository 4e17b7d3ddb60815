import torch

from models.blockdrop import BlockDropModel, run_backbone
from models.flops import count_flops, measure_flops
from models.policy import PolicyConfig, PolicyNet
from models.resnet import cifar_resnet, imagenet_resnet


def test_full_network_figures():
    # one multiply-add = 2 FLOPs; convolutions and linear layers only
    assert measure_flops(cifar_resnet(110), (32, 32)).full == 505_775_360  # about 5.06e8
    assert measure_flops(cifar_resnet(32), (32, 32)).full == 137_725_184  # about 1.38e8
    assert abs(measure_flops(imagenet_resnet(50), (224, 224)).full / 2 - 4.09e9) < 0.02e9  # 4.1 G multiply-adds


def test_hand_computed_block_and_stem():
    table = measure_flops(cifar_resnet(8), (32, 32))
    stem = 2 * 3 * 16 * 9 * 32 * 32
    first_block = 2 * (2 * 16 * 16 * 9 * 32 * 32)
    head = 2 * 64 * 10
    assert table.blocks[0] == first_block
    assert table.base == stem + head  # the CIFAR shortcuts are parameter-free


def test_per_image_flops_equal_counting_each_image_run_alone():
    torch.manual_seed(0)
    backbone = cifar_resnet(32).eval()
    policy = PolicyNet(PolicyConfig("cifar", 15)).eval()
    model = BlockDropModel(backbone, policy).eval()
    x = torch.randn(6, 3, 32, 32)
    mask = torch.rand(6, 15) < 0.5
    figures = model.flops_table.per_image(mask, include_policy=True)
    for i in range(6):
        counted, _ = count_flops(lambda image, m=mask[i : i + 1]: run_backbone(backbone, image, m), x[i : i + 1])
        policy_flops, _ = count_flops(policy, x[i : i + 1])
        assert figures[i].item() == counted + policy_flops


def test_infer_reports_policy_flops_only_when_the_policy_ran():
    model = BlockDropModel(cifar_resnet(8), PolicyNet(PolicyConfig("cifar", 3))).eval()
    x = torch.randn(2, 3, 32, 32)
    table = model.flops_table
    assert torch.equal(model.infer(x, mode="full").flops, torch.full((2,), table.full))
    result = model.infer(x, threshold=0.0)
    assert torch.equal(result.flops, torch.full((2,), table.full + table.policy))


def test_downsampled_policy_is_four_times_cheaper():
    full = measure_flops(cifar_resnet(32), (32, 32), PolicyNet(PolicyConfig("cifar", 15))).policy
    half = measure_flops(cifar_resnet(32), (32, 32), PolicyNet(PolicyConfig("cifar", 15, input_downsample=2))).policy
    assert 3.9 < full / half < 4.1

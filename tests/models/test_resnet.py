import pytest
import torch
import torchvision

from models.resnet import FlatResNet, ResNetConfig, cifar_resnet, imagenet_resnet, load_torchvision_state_dict
from tests.conftest import randomize_batchnorm


@pytest.mark.parametrize("depth, blocks", [(8, 3), (20, 9), (32, 15), (56, 27), (110, 54)])
def test_cifar_depths_have_6n_plus_2_layers(depth, blocks):
    model = cifar_resnet(depth)
    assert model.num_blocks == blocks
    assert [len(stage) for stage in model.blocks] == [blocks // 3] * 3
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_invalid_depth_is_refused():
    with pytest.raises(ValueError, match="6n\\+2"):
        ResNetConfig("cifar", 33)
    with pytest.raises(ValueError, match="ImageNet ResNet depth"):
        ResNetConfig("imagenet", 34)


def test_cifar_stage_shortcut_pools_and_appends_zero_channels():
    model = cifar_resnet(8).eval()
    x = torch.randn(1, 16, 32, 32)
    out = model.ds[1](x)
    assert out.shape == (1, 32, 16, 16)
    assert torch.allclose(out[:, :16], torch.nn.functional.avg_pool2d(x, 2))
    assert torch.count_nonzero(out[:, 16:]) == 0
    assert not list(model.ds.parameters())  # parameter-free, as in the original code


def test_block_returns_only_its_residual_branch():
    block = cifar_resnet(8).blocks[0][0].eval()
    x = torch.randn(1, 16, 8, 8)
    expected = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    assert torch.equal(block(x), expected)


@pytest.mark.parametrize("depth, builder", [(50, torchvision.models.resnet50), (101, torchvision.models.resnet101)])
def test_torchvision_weights_load_and_give_identical_logits(depth, builder):
    torch.manual_seed(0)
    reference = randomize_batchnorm(builder(weights=None))
    model = imagenet_resnet(depth).eval()
    load_torchvision_state_dict(model, reference.state_dict())
    x = torch.randn(2, 3, 224, 224) if depth == 50 else torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5, rtol=0)


def test_module_prefix_is_dropped_when_loading():
    source = cifar_resnet(8)
    state = {f"module.{k}".replace("blocks.0.0.", "layer1.0."): v for k, v in source.state_dict().items()}
    state = {
        k.replace("module.blocks.1.0.", "module.layer2.0.").replace("module.blocks.2.0.", "module.layer3.0."): v
        for k, v in state.items()
    }
    target = FlatResNet(ResNetConfig("cifar", 8))
    load_torchvision_state_dict(target, state)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)

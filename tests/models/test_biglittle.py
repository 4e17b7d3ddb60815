import pytest
import torch

from models import load_artifact, save_artifact
from models.artifacts import InputSpec, Manifest
from models.biglittle import BigLittleConfig, BigLittleNet
from models.flops import measure_flops
from models.resnet import cifar_resnet


def conv(cin: int, cout: int, k: int, side: int) -> int:
    return 2 * cin * cout * k * k * side * side


def hand_count_cifar(blocks: tuple[int, ...], alpha: int, beta: int, classes: int = 10, plain: int = 0) -> int:
    """Multiply-adds x 2 of the CIFAR bL-ResNet, layer by layer, from its definition."""
    total = conv(3, 16, 3, 32)
    side, cin = 32, 16
    for index, (width, k, stride) in enumerate(zip((16, 32, 64), blocks, (2, 2, 1))):
        if index >= 3 - plain:  # a plain ResNet stage: K blocks at the stage's resolution (the last, stride 1)
            total += conv(cin, width, 3, side) + conv(width, width, 3, side)
            total += conv(cin, width, 1, side) if cin != width else 0
            total += (k - 1) * 2 * conv(width, width, 3, side)
            cin = width
            continue
        half = side // 2
        total += conv(cin, width, 3, half) + conv(width, width, 3, half)  # big branch, first block (stride 2)
        total += conv(cin, width, 1, half) if cin != width else 0  # its shortcut: avg-pool, then 1x1 if widening
        total += (k - 2) * 2 * conv(width, width, 3, half)
        little, count = width // alpha, max(k // beta - 1, 1)
        total += conv(cin, little, 3, side) + conv(little, little, 3, side)
        total += conv(cin, little, 1, side) if cin != little else 0
        total += (count - 1) * 2 * conv(little, little, 3, side)
        total += conv(little, width, 1, side)  # little branch back to full width
        out = side // stride
        total += conv(width, width, 3, out) + conv(width, width, 3, out)  # fusion block (avg-pool shortcut)
        side, cin = out, width
    return total + 2 * 64 * classes


@pytest.mark.parametrize("blocks", [(5, 5, 5), (8, 8, 8)])
@pytest.mark.parametrize("plain", [0, 1])
@pytest.mark.parametrize(("alpha", "beta"), [(2, 4), (2, 1), (1, 2)])  # the paper's default; the shipped shape
def test_cifar_flops_match_hand_computation(blocks, plain, alpha, beta):
    model = BigLittleNet(BigLittleConfig("cifar", blocks, alpha, beta, plain_stages=plain))
    assert model.flops_table.full == hand_count_cifar(blocks, alpha, beta, plain=plain)
    assert sum(model.flops_table.blocks) < model.flops_table.full


def test_a_plain_last_stage_runs_at_the_stage_resolution():
    model = BigLittleNet(BigLittleConfig("cifar", (4, 4, 4), plain_stages=1)).eval()
    assert isinstance(model.stages[-1], torch.nn.Sequential) and len(model.stages[-1]) == 4
    features = model.stages[:2](model.stem(torch.randn(2, 3, 32, 32)))
    assert tuple(model.stages[2](features).shape) == (2, 64, 8, 8)
    for refused in (2, 3, -1):
        with pytest.raises(ValueError, match="only the last stage may stay plain"):
            BigLittleNet(BigLittleConfig("cifar", (4, 4, 4), plain_stages=refused))


def test_configs_written_before_plain_stages_read_as_before():
    old_cifar = {"family": "cifar", "blocks_per_stage": [5, 5, 5], "alpha": 2, "beta": 4, "num_classes": 10}
    assert BigLittleConfig.from_dict(old_cifar).plain_stages == 0
    old_imagenet = old_cifar | {"family": "imagenet", "blocks_per_stage": [3, 4, 6, 3], "num_classes": 1000}
    assert BigLittleConfig.from_dict(old_imagenet).plain_stages == 1
    config = BigLittleConfig("cifar", (3, 3, 3), plain_stages=1)
    assert BigLittleConfig.from_dict(config.to_dict()) == config


def test_cifar_shapes_and_savings():
    model = BigLittleNet(BigLittleConfig("cifar", (8, 8, 8))).eval()
    x = torch.randn(3, 3, 32, 32)
    assert model(x).shape == (3, 10)
    stage_outputs = []
    features = model.stem(x)
    for stage in model.stages:
        features = stage(features)
        stage_outputs.append(tuple(features.shape[1:]))
    assert stage_outputs == [(16, 16, 16), (32, 8, 8), (64, 8, 8)]
    full_resnet32 = measure_flops(cifar_resnet(32), (32, 32)).full
    assert model.flops_table.full < 0.7 * full_resnet32  # at least 30 % fewer FLOPs


def test_infer_runs_everything_and_refuses_policy_mode():
    model = BigLittleNet(BigLittleConfig("cifar", (5, 5, 5))).eval()
    result = model.infer(torch.randn(2, 3, 32, 32))
    assert result.keep_mask.all() and result.keep_mask.shape == (2, model.num_blocks)
    assert result.flops.tolist() == [model.flops_table.full] * 2
    with pytest.raises(ValueError, match="no policy"):
        model.infer(torch.randn(1, 3, 32, 32), mode="policy")


def test_artifact_round_trip(tmp_path):
    model = BigLittleNet(BigLittleConfig("cifar", (5, 5, 5))).eval()
    manifest = Manifest(
        name="bl", kind="biglittle", architecture={}, classes=[str(i) for i in range(10)], input=InputSpec(32, 32)
    )
    save_artifact(model, tmp_path / "bl", manifest)
    loaded = load_artifact(tmp_path / "bl")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.infer(x).logits, model.infer(x).logits)
    assert loaded.manifest.architecture == {"biglittle": model.config.to_dict()}


def test_imagenet_bl_resnet50_matches_the_published_cost():
    from models.biglittle import imagenet_bl_resnet50

    model = imagenet_bl_resnet50().eval()
    multiply_adds = model.flops_table.full / 2
    assert abs(multiply_adds - 2.85e9) / 2.85e9 < 0.03  # the paper: 2.85 G for alpha = 2, beta = 4
    parameters = sum(p.numel() for p in model.parameters())
    assert abs(parameters - 26.69e6) / 26.69e6 < 0.01  # the paper: 26.69 M
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    stage_shapes = []
    x = model.stem(torch.randn(1, 3, 224, 224))
    for stage in model.stages:
        x = stage(x)
        stage_shapes.append(tuple(x.shape[1:]))
    assert stage_shapes == [(256, 28, 28), (512, 14, 14), (1024, 14, 14), (2048, 7, 7)]

"""Checkpoints written in the original repository's layouts, built here from the documented key names."""

import pytest
import torch

from cli.main import main as blockdrop
from models import load_artifact
from models.blockdrop import BlockDropModel
from models.official import import_official
from models.policy import PolicyConfig, PolicyNet
from models.resnet import cifar_resnet
from tests.conftest import randomize_batchnorm


def _original_pair():
    backbone = randomize_batchnorm(cifar_resnet(32), seed=1)
    policy = randomize_batchnorm(PolicyNet(PolicyConfig("cifar", 15)), seed=2)
    return backbone, policy


def _as_original_agent(policy: PolicyNet) -> dict:
    state = dict(policy.state_dict())
    # the original kept a (replaced) classifier inside the features; old files may still carry it
    state["features.fc.weight"] = torch.zeros(10, 64)
    return state


def test_finetuned_checkpoint_imports_with_identical_logits_and_masks(tmp_path):
    backbone, policy = _original_pair()
    torch.save(
        {"resnet": backbone.state_dict(), "agent": _as_original_agent(policy), "epoch": 10, "acc": 0.9},
        tmp_path / "ckpt.t7",
    )
    assert (
        blockdrop(["import-official", str(tmp_path / "ckpt.t7"), "--arch", "R32_C10", "--out", str(tmp_path / "art")])
        == 0
    )
    loaded = load_artifact(tmp_path / "art")
    reference = BlockDropModel(backbone, policy).eval()
    x = torch.randn(8, 3, 32, 32)
    expected, actual = reference.infer(x), loaded.infer(x)
    assert torch.equal(expected.keep_mask, actual.keep_mask)
    assert torch.allclose(expected.logits, actual.logits, atol=1e-6)
    manifest = loaded.manifest
    assert manifest.kind == "blockdrop" and manifest.classes[0] == "airplane"
    assert manifest.input.mean is not None  # only R32 on CIFAR-10 was trained on normalised input


def test_backbone_only_file_in_layer_layout_with_module_prefix(tmp_path):
    backbone, _ = _original_pair()
    renamed = {}
    for key, value in backbone.state_dict().items():
        if key.startswith("blocks."):
            _, stage, rest = key.split(".", 2)
            key = f"layer{int(stage) + 1}.{rest}"
        renamed[f"module.{key}"] = value
    torch.save({"state_dict": renamed, "epoch": 164}, tmp_path / "pk.t7")
    manifest = import_official(tmp_path / "pk.t7", "R32_C10", tmp_path / "art")
    assert manifest.kind == "resnet"
    loaded = load_artifact(tmp_path / "art")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.infer(x).logits, backbone(x), atol=1e-6)


def test_agent_only_checkpoint_takes_its_backbone_from_a_second_file(tmp_path):
    backbone, policy = _original_pair()
    torch.save({"net": _as_original_agent(policy)}, tmp_path / "agent.t7")
    torch.save({"resnet": backbone.state_dict()}, tmp_path / "backbone.t7")
    manifest = import_official(
        tmp_path / "agent.t7", "R32_C10", tmp_path / "art", backbone_checkpoint=tmp_path / "backbone.t7"
    )
    assert manifest.kind == "blockdrop"
    with pytest.raises(ValueError, match="holds no backbone"):
        import_official(tmp_path / "agent.t7", "R32_C10", tmp_path / "art2")


def test_raw_input_models_record_no_normalisation(tmp_path):
    backbone = cifar_resnet(110)
    torch.save({"resnet": backbone.state_dict()}, tmp_path / "r110.t7")
    assert import_official(tmp_path / "r110.t7", "R110_C10", tmp_path / "art").input.mean is None


def test_wrong_architecture_and_unsafe_pickles_are_refused(tmp_path):
    torch.save({"resnet": cifar_resnet(20).state_dict()}, tmp_path / "r20.t7")
    with pytest.raises(ValueError, match="do not fit"):
        import_official(tmp_path / "r20.t7", "R32_C10", tmp_path / "art")

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"resnet": Evil()}, tmp_path / "evil.t7")
    with pytest.raises(ValueError, match="not a loadable weights-only checkpoint"):
        import_official(tmp_path / "evil.t7", "R32_C10", tmp_path / "art")
    assert (
        blockdrop(["import-official", str(tmp_path / "evil.t7"), "--arch", "R32_C10", "--out", str(tmp_path / "a")])
        == 2
    )

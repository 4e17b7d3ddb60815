"""Stochastic depth per image (``train backbone --random-drop``) and starting from an artifact (``--init-from``)."""

from __future__ import annotations

import pytest
import torch

from cli.main import main as blockdrop
from models import load_artifact
from models.blockdrop import run_backbone_masked
from models.resnet import FlatResNet, ResNetConfig
from tests.cli_refusal import refusal
from training.checkpoint import RunFolder
from training.random_drop import RandomBlockDrop, random_keep_mask

TINY = ["--max-batches", "3", "--batch-size", "16", "--val-size", "40", "--threads", "1"]


def test_keep_mask_rows_draw_their_own_rate_within_the_bounds():
    torch.manual_seed(0)
    mask = random_keep_mask(4000, 15, min_keep=0.5)
    assert mask.shape == (4000, 15) and mask.dtype == torch.bool
    kept = mask.float().mean()
    assert 0.73 < kept < 0.77  # E[U(0.5, 1)] = 0.75
    per_row = mask.float().mean(1)
    assert per_row.std() > 0.15  # rates differ per image, not one rate for the batch
    assert random_keep_mask(100, 15, min_keep=1.0).all()


def test_training_mode_runs_the_sampled_mask_and_eval_mode_the_full_network():
    torch.manual_seed(0)
    backbone = FlatResNet(ResNetConfig("cifar", 20, 10)).eval()  # eval: BatchNorm does not depend on the rows
    wrapper = RandomBlockDrop(backbone, min_keep=0.3)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(wrapper.eval()(x), backbone(x))
        wrapper.train()
        backbone.eval()  # keep BatchNorm in inference so the comparison is exact
        torch.manual_seed(1)
        dropped = wrapper(x)
        torch.manual_seed(1)
        mask = random_keep_mask(6, backbone.num_blocks, 0.3)
        assert not mask.all()
        assert torch.allclose(dropped, run_backbone_masked(backbone, x, mask), atol=1e-5)


def test_min_keep_must_be_a_probability():
    backbone = FlatResNet(ResNetConfig("cifar", 8, 10))
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="min_keep"):
            RandomBlockDrop(backbone, bad)


def _continue(cifar_root, tmp_path, source, name: str, *extra: str) -> list[str]:
    return [
        "train",
        "backbone",
        "--data-root",
        str(cifar_root),
        "--init-from",
        str(source),
        "--epochs",
        "2",
        "--lr",
        "0.02",
        "--run-dir",
        str(tmp_path / name),
        "--out",
        str(tmp_path / f"{name}-artifact"),
        *TINY,
        *extra,
    ]


@pytest.fixture(scope="module")
def scratch_backbone(cifar_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scratch")
    args = ["train", "backbone", "--data-root", str(cifar_root), "--depth", "14", "--epochs", "2"]
    assert blockdrop([*args, "--run-dir", str(tmp / "bb"), "--out", str(tmp / "bb-artifact"), *TINY]) == 0
    return tmp / "bb-artifact"


def test_random_drop_run_starts_from_the_artifact_and_records_its_history(cifar_root, tmp_path, scratch_backbone):
    args = _continue(cifar_root, tmp_path, scratch_backbone, "sd", "--random-drop", "0.5")
    assert blockdrop([*args, "--distill-from", str(scratch_backbone)]) == 0
    source, trained = load_artifact(scratch_backbone), load_artifact(tmp_path / "sd-artifact")
    assert trained.manifest.kind == "resnet" and trained.num_blocks == source.num_blocks == 6
    record = trained.manifest.training
    assert record["random_drop"] == {"min_keep": 0.5} and record["started_from"] == "bb-artifact"
    assert record["earlier"] == source.manifest.training and record["epochs"] == 2 + 2
    assert record["distillation"]["teacher"] == str(scratch_backbone)
    after = trained.backbone.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in source.backbone.state_dict().items())  # it trained them


def test_random_drop_run_resumes_to_identical_weights(cifar_root, tmp_path, scratch_backbone, monkeypatch):
    def args(name):
        return _continue(cifar_root, tmp_path, scratch_backbone, name, "--random-drop", "0.4")

    assert blockdrop(args("straight")) == 0
    original = RunFolder.save

    def save_then_stop(self, state):
        original(self, state)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(RunFolder, "save", save_then_stop)
        assert blockdrop(args("resumed")) == 130  # Ctrl-C: one line on resuming, status 130
    assert RunFolder(tmp_path / "resumed").load()["epoch"] == 1
    assert blockdrop(args("resumed")) == 0
    straight, resumed = RunFolder(tmp_path / "straight").load(), RunFolder(tmp_path / "resumed").load()
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_init_from_refuses_an_artifact_that_is_not_a_plain_resnet(cifar_root, tmp_path, scratch_backbone):
    finetune = ["train", "finetune", "--model", str(scratch_backbone), "--data-root", str(cifar_root), "--epochs", "1"]
    assert blockdrop([*finetune, "--run-dir", str(tmp_path / "ft"), "--out", str(tmp_path / "ft-artifact"), *TINY]) == 0
    message = refusal(_continue(cifar_root, tmp_path, tmp_path / "ft-artifact", "bad"))
    assert "plain ResNet artifact, not one of kind blockdrop" in message

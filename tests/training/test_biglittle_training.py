"""``blockdrop train biglittle``: from scratch, and going on from a trained bL-ResNet (``--init-from``)."""

from __future__ import annotations

import pytest
import torch

from cli.main import main as blockdrop
from models import load_artifact
from tests.cli_refusal import refusal

TINY = ["--max-batches", "3", "--batch-size", "16", "--val-size", "40", "--threads", "1"]


def _train(cifar_root, run_dir, out, *extra: str) -> list[str]:
    args = ["train", "biglittle", "--data-root", str(cifar_root), "--epochs", "2", "--lr", "0.02"]
    return [*args, "--run-dir", str(run_dir), "--out", str(out), *TINY, *extra]


@pytest.fixture(scope="module")
def scratch_bl(cifar_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bl")
    args = _train(cifar_root, tmp / "bl", tmp / "bl-artifact", "--blocks", "2", "2", "4", "--plain-stages", "1")
    assert blockdrop(args) == 0
    return tmp / "bl-artifact"


def test_a_new_network_takes_the_shape_given(scratch_bl):
    model = load_artifact(scratch_bl)
    assert model.manifest.kind == "biglittle"
    assert model.config.blocks_per_stage == (2, 2, 4) and (model.config.alpha, model.config.beta) == (2, 4)
    assert model.config.plain_stages == 1
    assert model.manifest.training["epochs"] == 2 and "started_from" not in model.manifest.training


def test_init_from_goes_on_from_the_artifact_and_records_its_history(cifar_root, tmp_path, scratch_bl):
    args = _train(cifar_root, tmp_path / "kd", tmp_path / "kd-artifact", "--init-from", str(scratch_bl))
    assert blockdrop([*args, "--distill-from", str(scratch_bl)]) == 0
    source, trained = load_artifact(scratch_bl), load_artifact(tmp_path / "kd-artifact")
    assert trained.config == source.config
    record = trained.manifest.training
    assert record["started_from"] == "bl-artifact" and record["earlier"] == source.manifest.training
    assert record["epochs"] == 2 + 2 and record["distillation"]["teacher"] == str(scratch_bl)
    after = trained.state_dict()
    assert any(not torch.equal(value, after[key]) for key, value in source.state_dict().items())


def test_init_from_refuses_a_new_shape_or_another_kind(cifar_root, tmp_path, scratch_bl):
    reshaped = _train(cifar_root, tmp_path / "a", tmp_path / "a-art", "--init-from", str(scratch_bl), "--beta", "2")
    assert "--init-from keeps its artifact's shape" in refusal(reshaped)
    replained = _train(cifar_root, tmp_path / "p", tmp_path / "p-art", "--init-from", str(scratch_bl))
    replained += ["--plain-stages", "1"]
    assert "--init-from keeps its artifact's shape" in refusal(replained)
    with pytest.raises(SystemExit):  # argparse: only the last stage may stay plain
        blockdrop(_train(cifar_root, tmp_path / "c", tmp_path / "c-art", "--plain-stages", "2"))
    backbone = ["train", "backbone", "--data-root", str(cifar_root), "--depth", "8", "--epochs", "2"]
    assert blockdrop([*backbone, "--run-dir", str(tmp_path / "r"), "--out", str(tmp_path / "r-art"), *TINY]) == 0
    not_bl = _train(cifar_root, tmp_path / "b", tmp_path / "b-art", "--init-from", str(tmp_path / "r-art"))
    assert "takes a Big-Little artifact, not one of kind resnet" in refusal(not_bl)

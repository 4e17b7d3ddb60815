"""``blockdrop record-masks``: a BlockDrop artifact's most frequent masks on the training images, in its manifest,
as the CUDA engine reads them at start-up."""

from __future__ import annotations

import torch

from cli.main import main as blockdrop
from models import load_artifact
from models.artifacts import read_manifest
from models.signatures import parse_counted_masks
from tests.cli_refusal import refusal
from tests.service.conftest import make_artifacts
from tests.training.conftest import write_cifar10
from training.data import load_cifar, train_val_split
from training.masks import frequent_masks_record, policy_masks


def test_the_most_frequent_training_masks_are_recorded_with_their_counts(tmp_path):
    artifact = make_artifacts(tmp_path / "artifacts")["tiny-blockdrop"]
    data = write_cifar10(tmp_path / "data", per_batch=12)  # 60 training images
    args = ["record-masks", str(artifact), "--data-root", str(data), "--val-size", "20", "--top", "3"]
    assert blockdrop([*args, "--threads", "1"]) == 0
    model = load_artifact(artifact)  # the manifest still loads, hashes and all
    record = model.manifest.frequent_masks
    assert record["split"] == "train" and record["images"] == 40 and "blockdrop record-masks" in record["command"]
    assert record["threshold"] == model.manifest.threshold
    # the same masks as the policy draws on the 40 training images that validation left, counted
    train, _ = train_val_split(load_cifar(str(data), "train"), 20, seed=0)
    drawn = policy_masks(model, train.images)
    masks, counts = parse_counted_masks(record["masks"], model.num_blocks)
    distinct, drawn_counts = torch.unique(drawn, dim=0, return_counts=True)
    assert record["distinct"] == len(distinct) and record["kept"] == len(masks) == min(3, len(distinct))
    assert counts == sorted(drawn_counts.tolist(), reverse=True)[: len(counts)]
    for mask, count in zip(masks, counts, strict=True):
        assert int((drawn == mask).all(1).sum()) == count
    assert record["covered"] == round(sum(counts) / 40, 4)


def test_a_plain_network_and_a_bad_top_are_refused(tmp_path):
    artifacts = make_artifacts(tmp_path / "artifacts")
    data = write_cifar10(tmp_path / "data", per_batch=4)
    args = ["--data-root", str(data), "--val-size", "5"]
    assert "only BlockDrop models draw masks" in refusal(["record-masks", str(artifacts["tiny-resnet"]), *args])
    assert "--top must be >= 1" in refusal(["record-masks", str(artifacts["tiny-blockdrop"]), *args, "--top", "0"])
    assert not read_manifest(artifacts["tiny-blockdrop"]).frequent_masks


def test_ties_keep_the_mask_seen_first():
    masks = torch.tensor([[0, 1, 1], [1, 0, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    record = frequent_masks_record(masks, 0.5, top=2, split="test")
    assert record["masks"] == "6:2 8:2" and record["distinct"] == 3 and record["covered"] == 0.8

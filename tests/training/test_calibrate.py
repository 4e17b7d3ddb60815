"""``blockdrop calibrate``: a BlockDrop artifact's accuracy / FLOPs curve on the validation split, in its manifest."""

from __future__ import annotations

import shutil

import pytest

from cli.main import main as blockdrop
from models import load_artifact
from models.artifacts import read_manifest
from tests.cli_refusal import refusal
from tests.training.test_commands import trained  # noqa: F401 (the tiny pipeline's artifacts)
from training.calibrate import threshold_grid
from training.data import Normalizer, load_cifar, train_val_split
from training.evaluate import evaluate_blockdrop


def test_the_curve_is_recorded_from_validation_and_matches_eval(trained, cifar_root, tmp_path):  # noqa: F811
    artifact = tmp_path / "bd"
    shutil.copytree(trained / "ft-artifact", artifact)
    args = ["calibrate", str(artifact), "--data-root", str(cifar_root), "--val-size", "40", "--grid", "0.3:0.7:0.1"]
    assert blockdrop([*args, "--threads", "1"]) == 0
    calibration = read_manifest(artifact).calibration
    assert (
        calibration["split"] == "val"
        and calibration["images"] == 40
        and "blockdrop calibrate" in calibration["command"]
    )
    points = calibration["points"]
    default = read_manifest(artifact).defaults.get("threshold", 0.5)
    assert [p["threshold"] for p in points] == sorted({0.3, 0.4, 0.5, 0.6, 0.7, default})
    fractions = [p["flops_fraction"] for p in points]
    # (the policy is counted too: on this tiny ResNet-8 it costs more than the blocks it saves at low thresholds)
    assert all(f > 0 for f in fractions) and fractions == sorted(fractions, reverse=True)
    model = load_artifact(artifact)  # the manifest still loads, hashes and all
    _, val = train_val_split(load_cifar(str(cifar_root), "train"), 40, seed=0)
    row = evaluate_blockdrop(model, val, Normalizer(model.manifest.input.mean, model.manifest.input.std), "policy", 0.5)
    at_half = next(p for p in points if p["threshold"] == 0.5)
    assert at_half["accuracy"] == row["accuracy"] and at_half["flops_mean"] == pytest.approx(row["flops_mean"])


def test_a_plain_network_and_a_bad_grid_are_refused(trained, cifar_root):  # noqa: F811
    message = refusal(["calibrate", str(trained / "bb-artifact"), "--data-root", str(cifar_root), "--val-size", "40"])
    assert "only BlockDrop models have a dial" in message
    bad = ["calibrate", str(trained / "ft-artifact"), "--data-root", str(cifar_root), "--grid", "0.9:0.1:0.1"]
    assert "0 < start <= stop < 1" in refusal(bad)
    assert "START:STOP:STEP" in refusal([*bad[:-1], "half"])


def test_the_grid_includes_both_ends():
    assert threshold_grid(0.3, 0.8, 0.025)[0] == 0.3 and threshold_grid(0.3, 0.8, 0.025)[-1] == 0.8
    assert len(threshold_grid(0.3, 0.8, 0.025)) == 21

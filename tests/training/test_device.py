"""``--device``: refused plainly where it cannot work; on a GPU (skipped without one) a run trains there and
exports from the CPU."""

from __future__ import annotations

import pytest
import torch

from cli.main import main as blockdrop
from models import load_artifact
from models.device import resolve_device
from training.loop import resolve_bf16

TINY = ["--max-batches", "2", "--batch-size", "16", "--val-size", "40", "--threads", "1"]


def _backbone(data_root, tmp_path, *extra: str) -> list[str]:
    run = ["--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "artifact")]
    return ["train", "backbone", "--data-root", str(data_root), "--depth", "8", "--epochs", "2", *run, *TINY, *extra]


def test_a_gpu_the_machine_lacks_is_refused_before_any_data_is_read(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert blockdrop(_backbone(tmp_path / "no-such-data", tmp_path, "--device", "cuda")) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_a_gpu_number_past_the_last_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="has 1 GPU"):
        resolve_device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


def test_a_device_torch_does_not_know_is_refused_plainly():
    with pytest.raises(ValueError, match="device 'tpu9'"):
        resolve_device("tpu9")


def test_bf16_defaults_to_what_the_device_computes_natively(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_bf16(None, "cuda") is True
    assert resolve_bf16(False, "cuda") is False
    monkeypatch.setattr("training.loop.native_bf16", lambda: False)
    assert resolve_bf16(None, "cpu") is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_on_the_gpu_exports_a_cpu_artifact(cifar_root, tmp_path):
    # 3 epochs of 2 batches: the one-cycle schedule needs at least 5 optimiser steps
    run = _backbone(cifar_root, tmp_path, "--device", "cuda")
    run[run.index("--epochs") + 1] = "3"
    assert blockdrop(run) == 0
    model = load_artifact(tmp_path / "artifact")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert "--device cuda" in model.manifest.training["command"]

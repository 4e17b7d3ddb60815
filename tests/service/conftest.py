"""Small artifacts made here (ResNet-8 with and without a policy) and an app serving them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bench.common import metric_samples
from models import save_artifact
from models.artifacts import InputSpec, Manifest
from models.biglittle import BigLittleConfig, BigLittleNet
from models.blockdrop import BlockDropModel
from models.classes import CIFAR10_CLASSES
from models.policy import PolicyConfig, PolicyNet
from models.resnet import cifar_resnet
from models.slimming import prune, select_channels
from service.app import create_app
from service.config import Settings, VariantSettings
from tests.conftest import randomize_batchnorm

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def make_artifacts(root: Path) -> dict[str, Path]:
    import torch

    torch.manual_seed(0)
    policy = randomize_batchnorm(PolicyNet(PolicyConfig("cifar", 3)), seed=3)
    with torch.no_grad():
        policy.logit.bias.copy_(torch.tensor([3.0, 0.0, -3.0]))  # block 0 mostly kept, block 2 mostly dropped
    full = randomize_batchnorm(cifar_resnet(8), seed=2)
    slim = prune(full, select_channels(full, 0.5)).eval()
    paths = {}
    for name, model in {
        "tiny-blockdrop": BlockDropModel(randomize_batchnorm(cifar_resnet(8), seed=1), policy),
        "tiny-resnet": BlockDropModel(full),
        "tiny-slim": BlockDropModel(slim),
        "tiny-biglittle": BigLittleNet(BigLittleConfig("cifar", (2, 2, 2))),
    }.items():
        policy_net = getattr(model, "policy", None)
        kind = "biglittle" if isinstance(model, BigLittleNet) else "resnet" if policy_net is None else "blockdrop"
        manifest = cifar_manifest(name, kind, metrics={"val_accuracy": 0.1}, defaults={"threshold": 0.5})
        save_artifact(model.eval(), root / name, manifest)
        paths[name] = root / name
    return paths


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    return make_artifacts(tmp_path_factory.mktemp("artifacts"))


def make_settings(artifacts: dict[str, Path], **overrides) -> Settings:
    variants = [
        VariantSettings(name="blockdrop", artifact=artifacts["tiny-blockdrop"], mode="blockdrop", weight=1),
        VariantSettings(name="full", artifact=artifacts["tiny-resnet"], mode="full", weight=1),
    ]
    # in-process inference unless a test asks for worker processes (tests/service/test_worker.py, the live server)
    overrides.setdefault("inference_workers", "thread")
    overrides.setdefault("grpc_port", 0)  # many apps in one test run: no port of their own unless asked
    return Settings(variants=overrides.pop("variants", variants), **overrides)


@pytest.fixture
def settings(artifacts) -> Settings:
    return make_settings(artifacts)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` that carry ``labels`` in the Prometheus text ``text`` (0 if none)."""
    samples = metric_samples(text, name)
    return sum(value for found, value in samples if all(found.get(key) == want for key, want in labels.items()))


def metric_on(client, name: str, **labels: str) -> float:
    """``metric`` on the /metrics of the service ``client`` (a TestClient, or an httpx client with its base URL)."""
    return metric(client.get("/metrics").text, name, **labels)


def png_bytes(size: tuple[int, int] = (32, 32), mode: str = "RGB", seed: int = 0, fmt: str = "PNG", **save) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None, "CMYK": 4}[mode]
    shape = (size[1], size[0]) if channels is None else (size[1], size[0], channels)
    image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def save_slow_resnet110(folder: Path) -> Path:
    """A full ResNet-110 artifact with random weights (``slow-resnet110``): slow enough for requests to be in flight."""
    path = folder / "slow-resnet110"
    save_artifact(BlockDropModel(cifar_resnet(110)).eval(), path, cifar_manifest("slow-resnet110", "resnet"))
    return path


@pytest.fixture(scope="session")
def served_variants(artifacts, tmp_path_factory) -> list[dict]:
    """What the live-server tests serve: the tiny BlockDrop and ResNet, and a ResNet-110 slow enough to queue
    (weight 0: only asked for by name)."""
    slow = save_slow_resnet110(tmp_path_factory.mktemp("slow"))
    return [
        {"name": "blockdrop", "artifact": str(artifacts["tiny-blockdrop"]), "mode": "blockdrop", "weight": 1},
        {"name": "full", "artifact": str(artifacts["tiny-resnet"]), "mode": "full", "weight": 1},
        {"name": "slow", "artifact": str(slow), "mode": "full", "weight": 0},
    ]


def cifar_manifest(name: str, kind: str, **fields) -> Manifest:
    """The manifest of a test artifact for 32x32 CIFAR-10 images; ``fields``: metrics, defaults, …"""
    spec = InputSpec(32, 32, None, MEAN, STD)
    return Manifest(name=name, kind=kind, architecture={}, classes=list(CIFAR10_CLASSES), input=spec, **fields)

"""A tiny CIFAR-10 folder in the official python-pickle layout, written by the tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from models.classes import CIFAR10_CLASSES


def write_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    batch = {
        "batch_label": "testing batch",
        "labels": labels,
        "data": images.reshape(len(images), -1),
        "filenames": [f"img_{i}.png" for i in range(len(images))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 40, seed: int = 0) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        # class-dependent brightness so that tiny runs have something to learn
        images = (rng.integers(0, 64, (per_batch, 3, 32, 32)) + labels[:, None, None, None] * 19).astype(np.uint8)
        write_batch(folder / name, images, labels.tolist())
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return root


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("data"))

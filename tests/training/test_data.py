import pickle

import numpy as np
import pytest
import torch

from tests.training.conftest import write_batch
from training.data import (
    Normalizer,
    iterate_batches,
    load_cifar,
    random_crop_flip,
    read_batch_file,
    train_val_split,
)


def test_reader_matches_a_file_in_the_official_format(tmp_path):
    images = np.arange(2 * 3072, dtype=np.uint32).astype(np.uint8).reshape(2, 3, 32, 32)
    write_batch(tmp_path / "data_batch_1", images, [3, 7])
    batch = read_batch_file(tmp_path / "data_batch_1")
    assert batch["labels"] == [3, 7]
    assert batch["data"].shape == (2, 3072)
    # rows hold the R, G and B planes of 1,024 values each, row-major
    assert np.array_equal(batch["data"][1].reshape(3, 32, 32), images[1])


def test_reader_refuses_pickles_that_would_run_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / "evil").write_bytes(pickle.dumps({"data": Payload()}, protocol=2))
    with pytest.raises(ValueError, match=r"not a readable CIFAR batch file \(refusing to load .*print"):
        read_batch_file(tmp_path / "evil")


def test_load_and_split(cifar_root):
    train = load_cifar(cifar_root, "train")
    test = load_cifar(cifar_root, "test")
    assert train.images.shape == (200, 3, 32, 32) and train.images.dtype == torch.uint8
    assert len(test) == 40 and train.classes[0] == "airplane"
    a_train, a_val = train_val_split(train, 50, seed=3)
    _b_train, b_val = train_val_split(train, 50, seed=3)
    assert torch.equal(a_val.images, b_val.images) and len(a_train) == 150
    joined = torch.cat([a_train.images, a_val.images]).flatten(1)
    assert len(torch.unique(joined, dim=0)) == len(torch.unique(train.images.flatten(1), dim=0))


def test_missing_data_root_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("BLOCKDROP_DATA_ROOT", raising=False)
    with pytest.raises(ValueError, match="--data-root"):
        load_cifar(None, "train")
    with pytest.raises(FileNotFoundError, match="--download"):
        load_cifar(tmp_path, "train")


def test_crop_and_flip_move_pixels_without_changing_them():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=0)
    for original, augmented in zip(images, out):
        assert torch.equal(augmented, original) or torch.equal(augmented, original.flip(-1))
    padded = random_crop_flip(images, torch.Generator().manual_seed(0), padding=4)
    assert padded.shape == images.shape and padded.dtype == torch.uint8
    assert not torch.equal(padded, images)


def test_batches_replay_from_the_seed(cifar_root):
    data = load_cifar(cifar_root, "train")
    first = [b for b, _ in iterate_batches(data, 32, shuffle=True, augment=True, seed=5)]
    second = [b for b, _ in iterate_batches(data, 32, shuffle=True, augment=True, seed=5)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_normalizer():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(Normalizer(None, None)(x), torch.ones(1, 3, 2, 2))
    assert torch.allclose(Normalizer((0.5,) * 3, (0.25,) * 3)(x), torch.full((1, 3, 2, 2), 2.0))

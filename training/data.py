"""CIFAR-10/100 from the standard python-pickle layout, held in memory as uint8 tensors.

The batches are pickles, so they are read with an unpickler that can build numpy arrays and plain containers
and nothing else: a tampered file fails to load instead of running code. Augmentation (pad-4 random crop,
horizontal flip) runs on whole uint8 batches, which keeps two CPU cores busy with the model, not the loader.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATA_ROOT_ENV = "BLOCKDROP_DATA_ROOT"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_LAYOUTS = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"),
        "labels": "labels",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", "fine_label_names"),
        "labels": "fine_labels",
    },
}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")
        return super().find_class(module, name)


def read_batch_file(path: Path) -> dict:
    """Read one CIFAR pickle (protocol 2, Python 2 strings) without allowing arbitrary objects."""
    with open(path, "rb") as f:
        try:
            data = _ArrayOnlyUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:  # truncated, corrupt, not one
            raise ValueError(f"{path} is not a readable CIFAR batch file ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a CIFAR batch file (expected a dict)")
    return data


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 [N, 3, 32, 32] and labels as int64 [N]."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Tensor) -> ImageSet:
        return ImageSet(self.images[indices], self.labels[indices], self.classes)


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    root = data_root or os.environ.get(DATA_ROOT_ENV)
    if not root:
        raise ValueError(f"no data root: pass --data-root or set {DATA_ROOT_ENV}")
    return Path(root)


def load_cifar(
    data_root: str | os.PathLike | None, split: str, dataset: str = "cifar10", download: bool = False
) -> ImageSet:
    """Load the ``train`` or ``test`` split of ``cifar10`` / ``cifar100`` from ``data_root``."""
    layout = _LAYOUTS[dataset]
    root = resolve_data_root(data_root)
    folder = root / layout["folder"]
    if not folder.is_dir() and (root.name == layout["folder"]):
        folder = root
    if not folder.is_dir():
        if not download:
            raise FileNotFoundError(
                f"{folder} not found; point --data-root (or ${DATA_ROOT_ENV}) at the folder holding it, or let "
                "`blockdrop train --download` fetch it"
            )
        _download(root, dataset)
    images, labels = [], []
    for name in layout[split]:
        batch = read_batch_file(folder / name)
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[layout["labels"]])
    meta_file, meta_key = layout["meta"]
    classes = tuple(read_batch_file(folder / meta_file)[meta_key])
    return ImageSet(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64), classes)


def _download(root: Path, dataset: str) -> None:
    import torchvision  # only needed for the download

    cls = torchvision.datasets.CIFAR10 if dataset == "cifar10" else torchvision.datasets.CIFAR100
    cls(root=str(root), train=True, download=True)


def train_val_split(train: ImageSet, val_size: int = 5000, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """A seeded split of the training set into (train, validation)."""
    if not 0 <= val_size < len(train):
        raise ValueError(f"val_size must be in [0, {len(train)}), got {val_size}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(order[val_size:]), train.subset(order[:val_size])


def random_crop_flip(images: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Pad-``padding`` random crop and random horizontal flip of a uint8 batch [N, C, H, W]."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    rows = (top + torch.arange(h)).view(n, 1, h, 1)
    cols = (left + torch.arange(w)).view(n, 1, 1, w)
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip.view(n, 1, 1, 1), cols.flip(-1), cols)
    batch_index = torch.arange(n).view(n, 1, 1, 1)
    channel_index = torch.arange(c).view(1, c, 1, 1)
    return padded[batch_index, channel_index, rows, cols]


class Normalizer:
    """uint8 [N, 3, H, W] -> float normalised by mean / std (or only scaled to [0, 1] when both are None)."""

    def __init__(self, mean: tuple[float, ...] | None, std: tuple[float, ...] | None):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) if mean else None
        self.std = torch.tensor(std).view(1, -1, 1, 1) if std else None

    def to(self, device: torch.device | str) -> Normalizer:
        """This normaliser with its mean / std on ``device``, moved once rather than on every batch."""
        moved = Normalizer(None, None)
        if self.mean is not None:
            moved.mean, moved.std = self.mean.to(device), self.std.to(device)
        return moved

    def __call__(self, images: Tensor) -> Tensor:
        x = images.float().div_(255.0)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x


def iterate_batches(
    data: ImageSet, batch_size: int, *, shuffle: bool, augment: bool, seed: int = 0, drop_last: bool = False
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (uint8 images, labels) batches; order and augmentation depend only on ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=generator) if shuffle else torch.arange(len(data))
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        images = data.images[index]
        if augment:
            images = random_crop_flip(images, generator)
        yield images, data.labels[index]


def num_batches(data: ImageSet, batch_size: int, drop_last: bool = False) -> int:
    return len(data) // batch_size if drop_last else -(-len(data) // batch_size)


def normalization_for(dataset: str) -> tuple[tuple[float, ...], tuple[float, ...], Normalizer]:
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if dataset == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    return mean, std, Normalizer(mean, std)


def load_training_split(args) -> tuple[ImageSet, ImageSet]:
    """The (train, validation) split the command-line options ask for."""
    full = load_cifar(args.data_root, "train", args.dataset, download=args.download)
    train, val = train_val_split(full, args.val_size, seed=args.seed)
    if args.train_subset:
        train = train.subset(torch.arange(min(args.train_subset, len(train))))
        val = val.subset(torch.arange(min(args.train_subset, len(val))))
    return train, val

"""Memory every process of the service maps: plain files in a private runtime folder on tmpfs (``/dev/shm`` where
there is one), mapped with ``MAP_SHARED`` through ``torch.from_file``. Files rather than POSIX shared-memory
objects, because the runtime folder is removed as a whole when the service stops, whichever process died how, and
Python's resource tracker never unlinks a segment another process still uses."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

ALIGN = 64  # every array starts on a cache line


def make_runtime_dir() -> Path:
    """A new folder only this user can enter (0700), on tmpfs if the machine has one."""
    parent = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="blockdrop-", dir=parent))


def remove_runtime_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def map_file(path: Path, nbytes: int, create: bool = False) -> Tensor:
    """``nbytes`` of shared memory as a uint8 tensor, backed by the file at ``path`` (made, zeroed, if ``create``)."""
    if create:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(descriptor, nbytes)
        finally:
            os.close(descriptor)
    elif path.stat().st_size != nbytes:
        raise ValueError(f"{path} holds {path.stat().st_size} bytes, expected {nbytes}")
    return torch.from_file(str(path), shared=True, size=nbytes, dtype=torch.uint8)


@dataclass(frozen=True)
class ArraySpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


def layout_size(arrays: list[ArraySpec]) -> int:
    return sum(-(-spec.nbytes // ALIGN) * ALIGN for spec in arrays)


def carve(buffer: Tensor, arrays: list[ArraySpec]) -> dict[str, Tensor]:
    """Typed views, one per spec in order, into one shared uint8 ``buffer``."""
    views, offset = {}, 0
    for spec in arrays:
        views[spec.name] = buffer[offset : offset + spec.nbytes].view(spec.dtype).view(spec.shape)
        offset += -(-spec.nbytes // ALIGN) * ALIGN
    return views

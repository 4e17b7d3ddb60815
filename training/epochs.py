"""The epoch driver every training loop shares: resume from the run folder, seed each epoch, train, validate,
log one record and checkpoint, so that a run stopped after any epoch goes on exactly where it was."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm import tqdm

from training.checkpoint import RunFolder
from training.data import ImageSet, iterate_batches, num_batches

EpochStats = dict[str, float]


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order, augmentation and random masks: a resumed run replays them."""
    return seed * 100_003 + epoch


def training_batches(
    data: ImageSet, batch_size: int, seed: int, epoch: int, max_batches: int | None = None
) -> tuple[int, Iterator]:
    """One epoch's shuffled, augmented full batches (at most ``max_batches``), and how many there are."""
    steps = num_batches(data, batch_size, drop_last=True)
    steps = min(steps, max_batches) if max_batches else steps
    batches = iterate_batches(
        data, batch_size, shuffle=True, augment=True, seed=epoch_seed(seed, epoch), drop_last=True
    )
    return steps, itertools.islice(batches, steps)


@dataclass
class EpochDriver:
    run: RunFolder
    epochs: int
    seed: int
    description: str
    settings: Mapping[str, Any]  # a resumed run must have been started with the same ones
    state: Mapping[str, Stateful]  # checkpoint key -> what is saved under it and restored on resume
    history: list[dict[str, Any]] = field(default_factory=list)

    def resume(self) -> int:
        """The number of epochs already done (0 for a new run), with the saved state restored."""
        saved = self.run.load()
        if saved is None:
            return 0
        self.run.check_config(saved, dict(self.settings))
        for key, stateful in self.state.items():
            try:
                stateful.load_state_dict(saved[key])
            except (KeyError, RuntimeError, ValueError):  # the settings agree, the model does not (its depth, kind)
                raise ValueError(
                    f"{self.run.path} holds a run of another model or command (its saved {key} does not fit this "
                    "one); use a new --run-dir"
                ) from None
        done = int(saved["epoch"])
        if done >= self.epochs:
            tqdm.write(f"{self.run.path} has finished its {done} epochs already")
        else:
            tqdm.write(f"resuming {self.run.path} after epoch {done}")
        return done

    def drive(
        self,
        train_epoch: Callable[[int], EpochStats],
        validate: Callable[[int], EpochStats],
        annotate: Callable[[int], dict[str, Any]] = lambda epoch: {},
    ) -> list[dict[str, Any]]:
        """Run the remaining epochs; ``annotate(epoch)`` adds figures read after training (a learning rate)."""
        for epoch in range(self.resume(), self.epochs):
            started = time.time()
            torch.manual_seed(epoch_seed(self.seed, epoch))
            train_stats = train_epoch(epoch)
            val_stats = validate(epoch)
            record = {"epoch": epoch + 1, "seconds": round(time.time() - started, 1)} | annotate(epoch)
            record |= {f"train_{k}": v for k, v in train_stats.items()} | {f"val_{k}": v for k, v in val_stats.items()}
            self.run.log(record)
            tqdm.write(
                f"{self.description} epoch {epoch + 1}/{self.epochs}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
            )
            checkpoint = {"epoch": epoch + 1, "config": dict(self.settings)}
            self.run.save(checkpoint | {key: stateful.state_dict() for key, stateful in self.state.items()})
        return self.run.history()

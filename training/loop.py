"""The supervised training loop shared by the backbone, slimming and Big-Little commands.

SGD with Nesterov momentum under a one-cycle schedule (it gets far in few epochs), bf16 autocast where the CPU
computes bf16 natively (AMX / AVX-512 BF16; emulated bf16 is far slower than fp32) and channels-last memory
(faster convolutions on the CPU); the epochs, checkpoints and log come from ``training.epochs``. A resumed run
replays exactly: data order and augmentation depend only on (seed, epoch). ``--device cuda`` trains on a GPU
(bf16 autocast by default there): batches are drawn and augmented on the CPU as uint8 and moved over, and the
step statistics stay on the device so that no step waits for the GPU to finish.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from training.checkpoint import RunFolder
from training.data import ImageSet, Normalizer, iterate_batches, num_batches
from training.distill import supervised_loss
from training.epochs import EpochDriver, training_batches


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.25
    bf16: bool = True
    channels_last: bool = True
    seed: int = 0
    max_batches: int | None = None  # cap per epoch, for smoke tests
    distill_weight: float = 0.0  # with a teacher: (1 - w) CE + w KD
    distill_temperature: float = 4.0

    def steps_per_epoch(self, train: ImageSet) -> int:
        steps = num_batches(train, self.batch_size, drop_last=True)
        return min(steps, self.max_batches) if self.max_batches else steps


POSTFIX_EVERY = 50  # steps between progress-bar statistics

# Called after backward, before the optimiser step (Network Slimming adds its L1 subgradient here).
AfterBackward = Callable[[nn.Module], None]


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware. Without it oneDNN emulates bf16, and a bf16-autocast training
    step is many times slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_bf16(requested: bool | None, device: torch.device | str = "cpu") -> bool:
    """``--bf16`` / ``--no-bf16`` as given, else bf16 only where the hardware has it."""
    if requested is not None:
        return requested
    return torch.cuda.is_bf16_supported() if torch.device(device).type == "cuda" else native_bf16()


def autocast(enabled: bool, device: torch.device | str = "cpu") -> torch.autocast:
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


def to_input(images: Tensor, normalize: Normalizer, channels_last: bool, device: torch.device | str = "cpu") -> Tensor:
    x = normalize(images.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, data: ImageSet, normalize: Normalizer, config: FitConfig, device: torch.device | str = "cpu"
) -> dict[str, float]:
    model.eval()
    correct, loss_sum = torch.zeros((), device=device), torch.zeros((), device=device)
    for images, labels in iterate_batches(data, 500, shuffle=False, augment=False):
        labels = labels.to(device, non_blocking=True)
        with autocast(config.bf16, device):
            logits = model(to_input(images, normalize, config.channels_last, device)).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    return {"accuracy": correct.item() / len(data), "loss": loss_sum.item() / len(data)}


def fit(
    model: nn.Module,
    train: ImageSet,
    val: ImageSet,
    normalize: Normalizer,
    config: FitConfig,
    run: RunFolder,
    *,
    after_backward: AfterBackward | None = None,
    teacher: nn.Module | None = None,
    description: str = "train",
    device: torch.device | str = "cpu",
    run_settings: dict | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``device``, resuming from ``run`` if it holds a checkpoint; returns the epoch
    log, with the model back on the CPU. With a ``teacher`` (a frozen full network) the loss is
    ``(1 - w) CE + w KD`` with ``config.distill_weight``. ``run_settings`` are settings outside ``config`` that a
    resumed run must share too (it is refused otherwise)."""
    torch.manual_seed(config.seed)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    if teacher is not None:
        teacher.eval().requires_grad_(False)  # in train mode its BatchNorm statistics would drift
        teacher.to(device, memory_format=memory_format)
    model.to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True
    )
    total_steps = config.epochs * config.steps_per_epoch(train)
    if total_steps < 5:
        raise ValueError(f"the one-cycle schedule needs at least 5 optimiser steps, this run has {total_steps}")
    # OneCycleLR needs at least two warm-up steps; only tiny smoke runs come near that
    warmup = min(max(config.warmup_fraction, 2.5 / total_steps), 0.5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=warmup
    )
    steps = SupervisedSteps(
        model,
        train,
        normalize.to(device),
        config,
        optimizer,
        schedule,
        torch.device(device),
        after_backward,
        teacher,
        description,
    )
    driver = EpochDriver(
        run,
        config.epochs,
        config.seed,
        description,
        settings=asdict(config) | (run_settings or {}),
        state={"model": model, "optimizer": optimizer, "schedule": schedule},
    )
    history = driver.drive(
        steps.train_epoch,
        lambda epoch: evaluate_classifier(model, val, steps.normalize, config, device),
        annotate=lambda epoch: {"lr": schedule.get_last_lr()[0]},
    )
    model.eval().to("cpu")
    if teacher is not None:
        teacher.to("cpu")
    return history


@dataclass
class SupervisedSteps:
    """One supervised epoch: what it trains, on what, and how each step updates."""

    model: nn.Module
    train: ImageSet
    normalize: Normalizer  # already on the training device
    config: FitConfig
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    after_backward: AfterBackward | None = None
    teacher: nn.Module | None = None
    description: str = "train"

    def train_epoch(self, epoch: int) -> dict[str, float]:
        model, config, device = self.model, self.config, self.device
        model.train()
        steps, batches = training_batches(self.train, config.batch_size, config.seed, epoch, config.max_batches)
        seen = 0
        correct, loss_sum = torch.zeros((), device=device), torch.zeros((), device=device)
        with tqdm(
            total=steps, desc=f"{self.description} {epoch + 1}/{config.epochs}", leave=False, mininterval=5
        ) as bar:
            for step, (images, labels) in enumerate(batches):
                x = to_input(images, self.normalize, config.channels_last, device)
                labels = labels.to(device, non_blocking=True)
                logits, loss = self._step(x, labels)
                seen += len(labels)
                loss_sum += loss.detach() * len(labels)
                correct += (logits.argmax(1) == labels).sum()
                bar.update()
                if step % POSTFIX_EVERY == 0:  # reading the statistics waits for the device
                    bar.set_postfix(
                        loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}", refresh=False
                    )
        return {"loss": loss_sum.item() / seen, "accuracy": correct.item() / seen}

    def _step(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        config = self.config
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad(), autocast(config.bf16, x.device):
                teacher_logits = self.teacher(x).float()
        with autocast(config.bf16, x.device):
            logits = self.model(x)
            loss = supervised_loss(
                logits.float(), labels, teacher_logits, config.distill_weight, config.distill_temperature
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.after_backward is not None:
            self.after_backward(self.model)
        self.optimizer.step()
        self.schedule.step()
        return logits, loss

"""``blockdrop train backbone``: a CIFAR ResNet trained from scratch with the shared loop."""

from __future__ import annotations

import argparse

import torch
from torch import nn

from models.resnet import FlatResNet, ResNetConfig
from training.checkpoint import RunFolder
from training.data import load_training_split, normalization_for
from training.distill import distill_settings, distillation_record, load_teacher
from training.export import dataset_input
from training.loop import FitConfig, fit, resolve_bf16


def fit_config_from_args(args: argparse.Namespace, epochs: int | None = None, lr: float | None = None) -> FitConfig:
    """The loop's settings from the command line; ``epochs`` / ``lr`` override ``--epochs`` / ``--lr``."""
    return FitConfig(
        epochs=epochs if epochs is not None else args.epochs,
        batch_size=args.batch_size,
        lr=lr if lr is not None else args.lr,
        weight_decay=args.weight_decay,
        bf16=resolve_bf16(args.bf16),
        seed=args.seed,
        max_batches=args.max_batches,
        **distill_settings(args),
    )


def teacher_from_args(args: argparse.Namespace, classes: tuple[str, ...]) -> nn.Module | None:
    """The ``--distill-from`` network for a model trained here on ``--dataset``, or None."""
    if not getattr(args, "distill_from", None):
        return None
    return load_teacher(args.distill_from, dataset_input(args.dataset), classes)


def train_backbone(args: argparse.Namespace) -> int:
    train, val = load_training_split(args)
    _, _, normalize = normalization_for(args.dataset)
    torch.manual_seed(args.seed)
    config = ResNetConfig("cifar", args.depth, len(train.classes))
    model = FlatResNet(config)
    run = RunFolder(args.run_dir)
    fit_config = fit_config_from_args(args)
    teacher = teacher_from_args(args, train.classes)
    history = fit(model, train, val, normalize, fit_config, run, teacher=teacher, description=f"resnet{args.depth}")
    if args.out:
        from training.export import export_resnet

        extra = distillation_record(args)
        export_resnet(model, args, train.classes, history, extra=extra)
    return 0

"""``blockdrop train backbone``: a CIFAR ResNet trained with the shared loop, from scratch or from an artifact,
optionally with per-image random block dropping (``training.random_drop``)."""

from __future__ import annotations

import argparse

import torch
from torch import nn

from models import load_artifact
from models.artifacts import Manifest
from models.blockdrop import BlockDropModel
from models.resnet import FlatResNet, ResNetConfig
from training.checkpoint import RunFolder
from training.data import load_training_split, normalization_for
from training.distill import distill_settings, distillation_record, load_teacher
from training.export import continuation, dataset_input
from training.loop import FitConfig, fit, resolve_bf16
from training.random_drop import RandomBlockDrop


def fit_config_from_args(args: argparse.Namespace, epochs: int | None = None, lr: float | None = None) -> FitConfig:
    """The loop's settings from the command line; ``epochs`` / ``lr`` override ``--epochs`` / ``--lr``."""
    return FitConfig(
        epochs=epochs if epochs is not None else args.epochs,
        batch_size=args.batch_size,
        lr=lr if lr is not None else args.lr,
        weight_decay=args.weight_decay,
        bf16=resolve_bf16(args.bf16, args.device),
        seed=args.seed,
        max_batches=args.max_batches,
        **distill_settings(args),
    )


def teacher_from_args(args: argparse.Namespace, classes: tuple[str, ...]) -> nn.Module | None:
    """The ``--distill-from`` network for a model trained here on ``--dataset``, or None."""
    if not getattr(args, "distill_from", None):
        return None
    return load_teacher(args.distill_from, dataset_input(args.dataset), classes)


def initial_backbone(args: argparse.Namespace, classes: tuple[str, ...]) -> tuple[FlatResNet, Manifest | None]:
    """A new ResNet of ``--depth``, or a copy of ``--init-from``'s weights with that artifact's manifest."""
    if not args.init_from:
        return FlatResNet(ResNetConfig("cifar", args.depth, len(classes))), None
    source = start_from_artifact(args.init_from, "resnet", "a plain ResNet", args.dataset, classes)
    return source.backbone, source.manifest


def load_resnet_family(path: str, option: str) -> BlockDropModel:
    """The artifact ``option`` names, if it holds a ResNet backbone (a plain ResNet or BlockDrop, slimmed or not);
    any other kind (a Big-Little network) refused in a plain message."""
    model = load_artifact(path)
    if not isinstance(model, BlockDropModel):
        raise ValueError(f"{path}: {option} takes a ResNet or BlockDrop artifact, not a {model.manifest.kind}")
    return model


def start_from_artifact(path: str, kind: str, described: str, dataset: str, classes: tuple[str, ...]) -> nn.Module:
    """The ``--init-from`` artifact, refused with a plain message unless it is of ``kind`` for ``dataset``."""
    source = load_artifact(path)
    if source.manifest.kind != kind:
        raise ValueError(f"{path}: --init-from takes {described} artifact, not one of kind {source.manifest.kind}")
    if source.manifest.input != dataset_input(dataset) or list(source.manifest.classes) != list(classes):
        raise ValueError(f"{path}: it was trained on other input or classes than --dataset {dataset}")
    return source


def train_backbone(args: argparse.Namespace) -> int:
    train, val = load_training_split(args)
    _, _, normalize = normalization_for(args.dataset)
    torch.manual_seed(args.seed)
    backbone, origin = initial_backbone(args, train.classes)
    model = RandomBlockDrop(backbone, args.random_drop) if args.random_drop else backbone
    run = RunFolder(args.run_dir)
    fit_config = fit_config_from_args(args)
    teacher = teacher_from_args(args, train.classes)
    depth = backbone.config.depth
    history = fit(
        model, train, val, normalize, fit_config, run, teacher=teacher, description=f"resnet{depth}", device=args.device
    )
    if args.out:
        from training.export import export_resnet

        extra = distillation_record(args) | origin_record(origin, history)
        if args.random_drop:
            extra["random_drop"] = {"min_keep": args.random_drop}
        export_resnet(backbone, args, train.classes, history, extra=extra)
    return 0


def origin_record(origin: Manifest | None, history: list[dict]) -> dict:
    """The manifest fields of a run that went on from the artifact ``origin`` (none from scratch)."""
    if origin is None:
        return {}
    return {"started_from": origin.name} | continuation(origin.training, history)

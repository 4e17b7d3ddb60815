"""Write trained models as artifacts, with how they were trained and their validation figures.

Test-set figures are added later, once, by ``blockdrop eval --record``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

from models.artifacts import InputSpec, Manifest, save_artifact
from training.data import normalization_for


def provenance(args: argparse.Namespace, history: list[dict], stage: str) -> dict[str, Any]:
    return {
        "stage": stage,
        "command": getattr(args, "command_line", ""),
        "dataset": args.dataset,
        "validation_images": args.val_size,
        "seed": args.seed,
        "epochs": len(history),
        "train_seconds": round(sum(r.get("seconds", 0.0) for r in history), 1),
        "last_epoch": history[-1] if history else {},
    }


def continuation(earlier: dict[str, Any], history: list[dict]) -> dict[str, Any]:
    """Provenance fields of a run that went on from an earlier artifact: totals over both, and the earlier
    record itself (its command, epochs and last epoch), so that nothing is lost when the artifact is replaced."""
    return {
        "epochs": earlier.get("epochs", 0) + len(history),
        "train_seconds": round(earlier.get("train_seconds", 0.0) + sum(r.get("seconds", 0.0) for r in history), 1),
        "earlier": earlier,
    }


def dataset_input(dataset: str) -> InputSpec:
    """The input of a network trained here on ``dataset``: 32x32, normalised by the dataset's mean and std."""
    mean, std, _ = normalization_for(dataset)
    return InputSpec(32, 32, None, mean, std)


def export_resnet(
    model: nn.Module,
    args: argparse.Namespace,
    classes: tuple[str, ...],
    history: list[dict],
    kind: str = "resnet",
    stage: str = "backbone",
    extra: dict[str, Any] | None = None,
) -> Manifest:
    last = history[-1] if history else {}
    manifest = Manifest(
        name=Path(args.out).name,
        kind=kind,
        architecture={},
        classes=list(classes),
        input=dataset_input(args.dataset),
        metrics={"val_accuracy": last.get("val_accuracy")},
        training=provenance(args, history, stage) | (extra or {}),
    )
    return save_artifact(_wrap(model), args.out, manifest)


def export_blockdrop(
    model: nn.Module,
    source: Manifest,
    args: argparse.Namespace,
    history: list[dict],
    stage: str,
    extra: dict[str, Any] | None = None,
    threshold: float = 0.5,
) -> Manifest:
    last = history[-1] if history else {}
    training = provenance(args, history, stage) | {"started_from": source.name}
    if source.kind == "blockdrop":  # went on from a policy or an earlier finetuning: keep that record
        training |= continuation(source.training, history)
    else:  # a new policy on a backbone artifact, which may never be shipped itself: keep how it was trained
        training["backbone_training"] = source.training
    manifest = Manifest(
        name=Path(args.out).name,
        kind="blockdrop",
        architecture={},
        classes=source.classes,
        input=source.input,
        metrics={k: v for k, v in last.items() if k.startswith("val_")},
        training=training | (extra or {}),
        defaults={"threshold": threshold},
    )
    return save_artifact(model, args.out, manifest)


def _wrap(model: nn.Module) -> nn.Module:
    """A bare FlatResNet is saved as a BlockDropModel without a policy (a plain ResNet variant)."""
    from models.blockdrop import BlockDropModel
    from models.resnet import FlatResNet

    return BlockDropModel(model) if isinstance(model, FlatResNet) else model

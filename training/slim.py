"""``blockdrop train slim``: Network Slimming — sparsity training, global pruning, fine-tuning.

Stage 1 trains with the L1 subgradient on the prunable BN scales (from scratch, or from a trained backbone
artifact); stage 2 removes the given percent of inner channels, globally by |gamma|; stage 3 fine-tunes the
narrower network. Each stage is a resumable run folder under ``--run-dir``; several ``--percent`` values can
share one sparsity stage.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from models import load_artifact
from models.resnet import FlatResNet, ResNetConfig
from models.slimming import add_sparsity_subgradient, inner_channel_count, prune, select_channels
from training.backbone import fit_config_from_args, load_resnet_family, teacher_from_args
from training.checkpoint import RunFolder
from training.data import load_training_split, normalization_for
from training.distill import distillation_record
from training.loop import fit


def train_slim(args: argparse.Namespace) -> int:
    train, val = load_training_split(args)
    _, _, normalize = normalization_for(args.dataset)
    torch.manual_seed(args.seed)
    teacher = teacher_from_args(args, train.classes)  # before any training: a wrong teacher fails at once
    if args.continue_from:
        return _continue_finetuning(args, train, val, normalize, teacher)
    if args.backbone:
        model = load_resnet_family(args.backbone, "--backbone").backbone.train()
    else:
        model = FlatResNet(ResNetConfig("cifar", args.depth, len(train.classes)))
    root = Path(args.run_dir)
    # distillation is for the fine-tuning stage only
    sparsity = replace(fit_config_from_args(args, epochs=args.sparsity_epochs), distill_weight=0.0)
    sparsity_history = fit(
        model,
        train,
        val,
        normalize,
        sparsity,
        RunFolder(root / "sparsity"),
        after_backward=lambda m: add_sparsity_subgradient(m, args.sparsity),
        description="sparsity",
        device=args.device,
    )

    keep = select_channels(model, args.percent, args.min_channels)
    pruned = prune(model.float(), keep)
    finetune = fit_config_from_args(args, epochs=args.finetune_epochs, lr=args.finetune_lr)
    history = fit(
        pruned,
        train,
        val,
        normalize,
        finetune,
        RunFolder(root / f"finetune-p{round(args.percent * 100)}"),
        teacher=teacher,
        description=f"finetune {args.percent:.0%} pruned",
        device=args.device,
    )
    if args.out:
        from training.export import export_resnet

        removed = 1 - inner_channel_count(pruned) / inner_channel_count(model)
        extra = {
            "slimming": {
                "percent": args.percent,
                "inner_channels_removed": round(removed, 4),
                "sparsity_penalty": args.sparsity,
                "sparsity_epochs": args.sparsity_epochs,
                "finetune_epochs": args.finetune_epochs,
                "started_from": args.backbone or "scratch",
                "inner_widths": list(pruned.config.inner_widths),
            }
        } | distillation_record(args)
        # provenance counts both stages' epochs and seconds; its last epoch is the fine-tuning's
        export_resnet(pruned, args, train.classes, sparsity_history + history, stage="slim", extra=extra)
    return 0


def _continue_finetuning(args: argparse.Namespace, train, val, normalize, teacher) -> int:
    """One more fine-tuning cycle of a pruned artifact; the manifest adds it to the earlier stages' record."""
    source = load_artifact(args.continue_from)
    earlier = source.manifest.training
    if "slimming" not in earlier:
        raise ValueError(f"{args.continue_from} is not a pruned artifact from 'blockdrop train slim'")
    pruned = source.backbone.train()
    config = fit_config_from_args(args, epochs=args.finetune_epochs, lr=args.finetune_lr)
    run = RunFolder(Path(args.run_dir) / "finetune")
    history = fit(
        pruned, train, val, normalize, config, run, teacher=teacher, description="finetune", device=args.device
    )
    if args.out:
        from training.export import continuation, export_resnet

        slimming = earlier["slimming"] | {"finetune_epochs": earlier["slimming"]["finetune_epochs"] + len(history)}
        extra = {"slimming": slimming, "started_from": source.manifest.name} | continuation(earlier, history)
        extra |= distillation_record(args)
        export_resnet(pruned, args, train.classes, history, stage="slim", extra=extra)
    return 0

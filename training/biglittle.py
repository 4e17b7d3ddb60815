"""``blockdrop train biglittle``: a CIFAR bL-ResNet trained with the shared loop, from scratch or from a trained one."""

from __future__ import annotations

import argparse

import torch

from models.biglittle import BigLittleConfig, BigLittleNet
from training.backbone import fit_config_from_args, origin_record, start_from_artifact, teacher_from_args
from training.checkpoint import RunFolder
from training.data import load_training_split, normalization_for
from training.distill import distillation_record
from training.loop import fit

# The CIFAR bL-ResNet of the shipped artifact: as deep as a ResNet-62, the paper's alpha and beta, every stage bL.
DEFAULT_BLOCKS, DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_PLAIN_STAGES = (10, 10, 10), 2, 4, 0


def train_biglittle(args: argparse.Namespace) -> int:
    train, val = load_training_split(args)
    _, _, normalize = normalization_for(args.dataset)
    torch.manual_seed(args.seed)
    if args.init_from:
        if any(value is not None for value in (args.blocks, args.alpha, args.beta, args.plain_stages)):
            raise ValueError(
                "--blocks, --alpha, --beta and --plain-stages shape a new network; "
                "--init-from keeps its artifact's shape"
            )
        model = start_from_artifact(args.init_from, "biglittle", "a Big-Little", args.dataset, train.classes)
        origin = model.manifest
    else:
        config = BigLittleConfig(
            "cifar",
            DEFAULT_BLOCKS if args.blocks is None else tuple(args.blocks),
            DEFAULT_ALPHA if args.alpha is None else args.alpha,
            DEFAULT_BETA if args.beta is None else args.beta,
            len(train.classes),
            DEFAULT_PLAIN_STAGES if args.plain_stages is None else args.plain_stages,
        )
        model, origin = BigLittleNet(config), None
    fit_config = fit_config_from_args(args)
    teacher = teacher_from_args(args, train.classes)
    run = RunFolder(args.run_dir)
    history = fit(
        model, train, val, normalize, fit_config, run, teacher=teacher, description="bL-ResNet", device=args.device
    )
    if args.out:
        from training.export import export_resnet

        extra = distillation_record(args) | origin_record(origin, history)
        export_resnet(model, args, train.classes, history, kind="biglittle", stage="biglittle", extra=extra)
    return 0

"""``blockdrop train biglittle``: a CIFAR bL-ResNet trained from scratch with the shared loop."""

from __future__ import annotations

import argparse

import torch

from models.biglittle import BigLittleConfig, BigLittleNet
from training.backbone import fit_config_from_args, teacher_from_args
from training.checkpoint import RunFolder
from training.data import load_training_split, normalization_for
from training.distill import distillation_record
from training.loop import fit


def train_biglittle(args: argparse.Namespace) -> int:
    train, val = load_training_split(args)
    _, _, normalize = normalization_for(args.dataset)
    torch.manual_seed(args.seed)
    config = BigLittleConfig("cifar", tuple(args.blocks), args.alpha, args.beta, len(train.classes))
    model = BigLittleNet(config)
    fit_config = fit_config_from_args(args)
    teacher = teacher_from_args(args, train.classes)
    run = RunFolder(args.run_dir)
    history = fit(model, train, val, normalize, fit_config, run, teacher=teacher, description="bL-ResNet")
    if args.out:
        from training.export import export_resnet

        extra = distillation_record(args)
        export_resnet(model, args, train.classes, history, kind="biglittle", stage="biglittle", extra=extra)
    return 0

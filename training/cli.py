"""``blockdrop train {backbone,policy,finetune,slim,biglittle}``."""

from __future__ import annotations

import argparse

from training.data import DATA_ROOT_ENV


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help=f"folder holding cifar-10-batches-py (default: ${DATA_ROOT_ENV})")
    parser.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10")
    parser.add_argument("--download", action="store_true", help="download the dataset with torchvision if missing")
    parser.add_argument("--run-dir", required=True, help="run folder: checkpoint each epoch, log.jsonl; rerun to resume")
    parser.add_argument("--out", help="artifact folder to write when training ends")
    parser.add_argument("--val-size", type=int, default=5000, help="validation images held out of the training set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-batches", type=int, help="cap batches per epoch (smoke tests)")
    parser.add_argument("--train-subset", type=int, help="train on only this many images (smoke tests)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in fp32 instead of bf16 autocast")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: all cores)")


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    commands = parser.add_subparsers(dest="what", metavar="WHAT", required=True)

    backbone = commands.add_parser("backbone", help="train a CIFAR ResNet from scratch")
    add_common_options(backbone)
    backbone.add_argument("--depth", type=int, default=32, help="6n+2: 8, 20, 32, 56, 110")
    backbone.add_argument("--epochs", type=int, default=60)
    backbone.add_argument("--lr", type=float, default=0.2, help="peak of the one-cycle schedule")
    backbone.add_argument("--weight-decay", type=float, default=5e-4)
    backbone.set_defaults(handler=_run("training.backbone", "train_backbone"))


def _run(module: str, function: str):
    def handler(args: argparse.Namespace) -> int:
        import importlib

        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        return getattr(importlib.import_module(module), function)(args)

    return handler

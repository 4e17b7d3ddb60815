"""What ``blockdrop calibrate`` and ``blockdrop record-masks`` share: a BlockDrop artifact and the training set split
as training split it (the seeded validation split held out), from the same options."""

from __future__ import annotations

import argparse

SPLITS = {"val": "validation", "train": "training"}


def add_arguments(parser: argparse.ArgumentParser, split: str) -> None:
    """The artifact and data options; ``split`` ("val" or "train") is the part of the training set the command reads."""
    parser.add_argument("artifact", help="a BlockDrop artifact folder (its manifest is rewritten)")
    parser.add_argument("--data-root", help="folder holding cifar-10-batches-py (default: $BLOCKDROP_DATA_ROOT)")
    parser.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10")
    parser.add_argument("--val-size", type=int, default=5000, help="validation images (the split training held out)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (must match training)")
    parser.add_argument("--limit", type=int, help=f"use only the first N {SPLITS[split]} images (smoke tests)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")


def load(args: argparse.Namespace, split: str, refusal: str):
    """The artifact's model (refused with ``refusal`` when it has no policy) and the ``split`` images."""
    import torch

    from models import load_artifact
    from training.data import load_cifar, train_val_split

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_artifact(args.artifact)
    if getattr(model, "policy", None) is None:
        raise ValueError(f"{args.artifact} is a {model.manifest.kind} artifact: {refusal}")
    train, val = train_val_split(load_cifar(args.data_root, "train", args.dataset), args.val_size, seed=args.seed)
    data = val if split == "val" else train
    if args.limit:
        data = data.subset(torch.arange(min(args.limit, len(data))))
    return model, data

"""``blockdrop record-masks ARTIFACT --data-root DIR``: record a BlockDrop artifact's most frequent masks on the
training images (the split training did not hold out for validation) at its served threshold, in its manifest
(``frequent_masks``). With ``CUDA_GRAPHS`` and ``CUDA_SIGNATURE_GRAPHS`` on, the service captures a whole-backbone
graph for each of them at start-up (docs/configuration.md#the-gpu-engine)."""

from __future__ import annotations

import argparse

from cli.help_format import DefaultsInHelp


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__, formatter_class=DefaultsInHelp)
    parser.add_argument("artifact", help="a BlockDrop artifact folder (its manifest is rewritten)")
    parser.add_argument("--data-root", help="folder holding cifar-10-batches-py (default: $BLOCKDROP_DATA_ROOT)")
    parser.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10")
    parser.add_argument("--val-size", type=int, default=5000, help="validation images training held out (left out)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (must match training)")
    parser.add_argument("--top", type=int, default=1024, help="how many of the most frequent masks to keep")
    parser.add_argument("--limit", type=int, help="use only the first N training images (smoke tests)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    import torch

    from models import load_artifact
    from models.artifacts import write_manifest
    from training.data import load_cifar, train_val_split
    from training.masks import frequent_masks_record, policy_masks

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    model = load_artifact(args.artifact)
    if getattr(model, "policy", None) is None:
        raise ValueError(f"{args.artifact} is a {model.manifest.kind} artifact: only BlockDrop models draw masks")
    train, _ = train_val_split(load_cifar(args.data_root, "train", args.dataset), args.val_size, seed=args.seed)
    if args.limit:
        train = train.subset(torch.arange(min(args.limit, len(train))))
    threshold = model.manifest.threshold
    masks = policy_masks(model, train.images, threshold)
    record = frequent_masks_record(
        masks, threshold, args.top, split="train", val_size=args.val_size, seed=args.seed, command=args.command_line
    )
    model.manifest.frequent_masks = record
    write_manifest(args.artifact, model.manifest)
    print(
        f"{record['distinct']} distinct masks on {record['images']} training images at threshold {threshold:g}; "
        f"the {record['kept']} most frequent cover {record['covered']:.1%} of them"
    )
    return 0

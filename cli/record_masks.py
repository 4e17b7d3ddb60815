"""``blockdrop record-masks ARTIFACT --data-root DIR``: record a BlockDrop artifact's most frequent masks on the
training images (the split training did not hold out for validation) at its served threshold, in its manifest
(``frequent_masks``). With ``CUDA_GRAPHS`` and ``CUDA_SIGNATURE_GRAPHS`` on, the service captures a whole-backbone
graph for each of them at start-up (docs/configuration.md#the-gpu-engine)."""

from __future__ import annotations

import argparse

from cli import policy_split
from cli.help_format import DefaultsInHelp


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__, formatter_class=DefaultsInHelp)
    policy_split.add_arguments(parser, "train")
    parser.add_argument("--top", type=int, default=1024, help="how many of the most frequent masks to keep")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    from models.artifacts import write_manifest
    from training.masks import frequent_masks_record, policy_masks

    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    model, train = policy_split.load(args, "train", "only BlockDrop models draw masks")
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

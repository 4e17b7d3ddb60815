"""``blockdrop calibrate ARTIFACT --data-root DIR``: record a BlockDrop artifact's accuracy / FLOPs curve over a grid
of policy thresholds, measured on the validation split held out of training, in its manifest (``calibration``)."""

from __future__ import annotations

import argparse

from cli.help_format import DefaultsInHelp


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__, formatter_class=DefaultsInHelp)
    parser.add_argument("artifact", help="a BlockDrop artifact folder (its manifest is rewritten)")
    parser.add_argument("--data-root", help="folder holding cifar-10-batches-py (default: $BLOCKDROP_DATA_ROOT)")
    parser.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10")
    parser.add_argument("--val-size", type=int, default=5000, help="validation images (the split training held out)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (must match training)")
    parser.add_argument("--grid", default="0.3:0.8:0.025", metavar="START:STOP:STEP", help="thresholds measured")
    parser.add_argument("--limit", type=int, help="use only the first N validation images (smoke tests)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    import torch

    from models import load_artifact
    from models.artifacts import write_manifest
    from training.calibrate import calibration_curve, threshold_grid
    from training.data import Normalizer, load_cifar, train_val_split

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        start, stop, step = (float(part) for part in args.grid.split(":"))
    except ValueError:
        raise ValueError(f"--grid must be START:STOP:STEP, got {args.grid!r}") from None
    thresholds = threshold_grid(start, stop, step)
    model = load_artifact(args.artifact)
    if getattr(model, "policy", None) is None:
        raise ValueError(f"{args.artifact} is a {model.manifest.kind} artifact: only BlockDrop models have a dial")
    default = model.manifest.defaults.get("threshold")
    if default is not None:  # the shipped operating point is always on the curve
        thresholds = sorted({*thresholds, float(default)})
    _, val = train_val_split(load_cifar(args.data_root, "train", args.dataset), args.val_size, seed=args.seed)
    if args.limit:
        val = val.subset(torch.arange(min(args.limit, len(val))))
    normalize = Normalizer(model.manifest.input.mean, model.manifest.input.std)
    points = calibration_curve(model, val, normalize, thresholds)
    model.manifest.calibration = {
        "split": "val",
        "images": len(val),
        "val_size": args.val_size,
        "seed": args.seed,
        "command": args.command_line,
        "points": points,
    }
    write_manifest(args.artifact, model.manifest)
    print(f"{'threshold':>9} {'accuracy':>9} {'blocks':>7} {'FLOPs':>7}")
    for p in points:
        print(f"{p['threshold']:>9g} {p['accuracy']:>8.2%} {p['blocks_mean']:>7.2f} {p['flops_fraction']:>6.1%}")
    return 0

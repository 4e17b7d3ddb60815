"""``blockdrop calibrate ARTIFACT --data-root DIR``: record a BlockDrop artifact's accuracy / FLOPs curve over a grid
of policy thresholds, measured on the validation split held out of training, in its manifest (``calibration``)."""

from __future__ import annotations

import argparse
import sys

from cli import policy_split
from cli.help_format import DefaultsInHelp


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__, formatter_class=DefaultsInHelp)
    policy_split.add_arguments(parser, "val")
    parser.add_argument("--grid", default="0.3:0.8:0.025", metavar="START:STOP:STEP", help="thresholds measured")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    from models.artifacts import write_manifest
    from training.calibrate import calibration_curve, threshold_grid
    from training.data import Normalizer

    try:
        start, stop, step = (float(part) for part in args.grid.split(":"))
    except ValueError:
        raise ValueError(f"--grid must be START:STOP:STEP, got {args.grid!r}") from None
    thresholds = threshold_grid(start, stop, step)
    model, val = policy_split.load(args, "val", "only BlockDrop models have a dial")
    default = model.manifest.defaults.get("threshold")
    if default is not None:  # the shipped operating point is always on the curve
        thresholds = sorted({*thresholds, float(default)})
    normalize = Normalizer(model.manifest.input.mean, model.manifest.input.std)

    def say(line: str) -> None:  # each pass over the images as it ends (on stderr: --json keeps stdout)
        print(f"calibrate: {line}", file=sys.stderr, flush=True)

    points = calibration_curve(model, val, normalize, thresholds, report=say)
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

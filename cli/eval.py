"""``blockdrop eval ARTIFACT``: the paper's Table 1 for one model, and an accuracy-vs-FLOPs threshold sweep.

Rows: the full ResNet, FirstK and RandomK with K = BlockDrop's mean blocks (rounded), and BlockDrop;
``--random-k`` adds RandomK at chosen K, also for a plain ResNet (how well it tolerates dropped blocks). ``--split``
chooses the validation split (for tuning) or the test set (report once); ``--record`` stores the figures in
the artifact's manifest. ``--device`` and ``--precision`` run the backbone as the service would there (the policy
stays fp32); each precision's accuracy is recorded apart, under ``metrics.precision``.
"""

from __future__ import annotations

import argparse
import json
import sys

from cli import arg_types
from cli.help_format import DefaultsInHelp
from training.data import DATA_ROOT_ENV

DEFAULT_SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7)


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(
        name, help=help_text, description=__doc__.split("\n\n")[0], formatter_class=DefaultsInHelp
    )
    parser.add_argument("artifact", help="artifact folder")
    parser.add_argument("--data-root", help=f"folder holding cifar-10-batches-py (default: ${DATA_ROOT_ENV})")
    parser.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10", help="which CIFAR")
    parser.add_argument(
        "--split",
        choices=["val", "test"],
        default="val",
        help="val: the seeded 5,000-image split held out of training (tune here); test: the test set",
    )
    parser.add_argument(
        "--val-size", type=arg_types.positive_int, default=5000, help="validation images held out (as in training)"
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed (must match training) and RandomK seed")
    parser.add_argument("--threshold", type=arg_types.threshold, help="policy threshold (default: the artifact's)")
    parser.add_argument(
        "--sweep",
        type=arg_types.thresholds,
        default=",".join(map(str, DEFAULT_SWEEP)),
        help="comma-separated thresholds for the accuracy-vs-FLOPs sweep ('' for none)",
    )
    parser.add_argument(
        "--random-k",
        type=_block_counts,
        default=[],
        metavar="K,K,...",
        help="also RandomK at these K (each image keeps K blocks chosen at random); ResNet and BlockDrop artifacts",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="the backbone's precision (the policy stays fp32); auto: bf16 on a GPU that has it, else fp32",
    )
    parser.add_argument("--limit", type=arg_types.positive_int, help="evaluate only the first N images (smoke tests)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--record",
        action="store_true",
        help="write the figures into the artifact's manifest, and --threshold (if given) as the "
        "artifact's default threshold",
    )
    parser.set_defaults(handler=_handle)


def _block_counts(text: str) -> list[int]:
    try:
        counts = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block counts, got {text!r}") from None
    if any(k < 0 for k in counts):
        raise argparse.ArgumentTypeError("block counts must be >= 0")
    return counts


def _handle(args: argparse.Namespace) -> int:
    import torch

    from models import load_artifact
    from models.artifacts import write_manifest
    from models.blockdrop import BlockDropModel
    from models.device import resolve_device
    from models.precision import apply_precision, resolve_precision
    from training.data import load_cifar, train_val_split
    from training.evaluate import evaluate_table, format_table, precision_summary

    if args.record and args.limit:
        raise ValueError("--record writes a whole split's figures into the manifest; --limit evaluates part of it")
    device = resolve_device(args.device)
    model = load_artifact(args.artifact, device=device)
    precision = resolve_precision(args.precision, device)
    if precision != "fp32":
        if not isinstance(model, BlockDropModel):
            raise ValueError(
                f"--precision {precision} needs a ResNet or BlockDrop artifact; {args.artifact} is a "
                f"{model.manifest.kind}"
            )
        apply_precision(model, precision)
        model.to(memory_format=torch.channels_last)
    if args.random_k and not isinstance(model, BlockDropModel):
        raise ValueError(f"--random-k needs a ResNet or BlockDrop artifact; {args.artifact} is a {model.manifest.kind}")
    if any(k > model.num_blocks for k in args.random_k):
        raise ValueError(f"--random-k: {model.manifest.name} has {model.num_blocks} blocks")
    if args.split == "test":
        data = load_cifar(args.data_root, "test", args.dataset)
    else:
        _, data = train_val_split(load_cifar(args.data_root, "train", args.dataset), args.val_size, seed=args.seed)
    if args.limit:
        data = data.subset(torch.arange(min(args.limit, len(data))))
    threshold = args.threshold if args.threshold is not None else model.manifest.threshold

    def say(line: str) -> None:  # each pass over the images as it ends (on stderr: --json keeps stdout)
        print(f"eval: {line}", file=sys.stderr, flush=True)

    result = evaluate_table(model, data, threshold, args.sweep, args.seed, args.random_k, device, report=say)
    result |= {"device": device.type, "precision": precision}
    print(json.dumps(result, indent=2) if args.json else format_table(model.manifest.name, args.split, result))
    if args.record:
        if precision == "fp32":  # the reference table; other precisions only add their accuracy beside it
            model.manifest.metrics[args.split] = result
        by_precision = model.manifest.metrics.setdefault("precision", {}).setdefault(precision, {})
        by_precision[args.split] = precision_summary(result)
        if args.threshold is not None and getattr(model, "policy", None) is not None:
            model.manifest.defaults["threshold"] = args.threshold
            drawn_at = model.manifest.frequent_masks.get("threshold")
            if drawn_at is not None and drawn_at != args.threshold:
                print(
                    f"note: the artifact's frequent masks were drawn at threshold {drawn_at}; for the GPU engine's "
                    f"graphs at {args.threshold}, run `blockdrop record-masks {args.artifact}` again",
                    file=sys.stderr,
                )
        write_manifest(args.artifact, model.manifest)
    return 0

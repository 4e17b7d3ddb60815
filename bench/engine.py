"""The bucketed executor against the plain one on the CPU: does padding to static shapes cost anything here?

The served BlockDrop model (default: the shipped ResNet-32 BlockDrop; BatchNorm folded, channels-last, fp32, the
artifact's threshold) runs test images (or random ones without ``--data-root``) through ``Variant.infer``'s two
executors, the two taking turns in each round; the ratio is the median over rounds of bucketed / plain. Results
go to ``bench/results/engine-cpu.{json,md}``:

    blockdrop bench engine --data-root DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import (
    RESULTS,
    machine_description,
    normalised_test_images,
    paired_median_ratio,
    positive_int,
    write_results,
)
from bench.gpu import CHECKPOINTS, median_ms
from models import load_artifact
from models.engine import BucketedEngine
from models.folding import fold_batchnorm


@torch.inference_mode()
def run(args: argparse.Namespace) -> dict:
    model = load_artifact(args.artifact)
    fold_batchnorm(model)
    model.to(memory_format=torch.channels_last)
    threshold = model.manifest.threshold
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    engine = BucketedEngine(model, max(batch_sizes), torch.channels_last)
    images = normalised_test_images(model.manifest, args.data_root, max(batch_sizes))
    rows = []
    for batch in batch_sizes:
        x = images[:batch].contiguous(memory_format=torch.channels_last)
        plain_times, bucketed_times = [], []
        for _ in range(args.rounds):
            plain_times.append(median_ms(lambda x: model.infer(x, threshold=threshold), [x], args.min_run_time))
            bucketed_times.append(median_ms(lambda x: engine.infer(x, threshold=threshold), [x], args.min_run_time))
        plain, bucketed = sorted(plain_times)[len(plain_times) // 2], sorted(bucketed_times)[len(bucketed_times) // 2]
        ratio = paired_median_ratio(bucketed_times, plain_times)
        rows.append(
            {
                "batch": batch,
                "plain_ms": round(plain, 3),
                "bucketed_ms": round(bucketed, 3),
                "bucketed_over_plain": round(ratio, 3),
            }
        )
        print(
            f"batch {batch}: plain {plain:.2f} ms, bucketed {bucketed:.2f} ms, bucketed / plain {ratio:.2f}", flush=True
        )
    return {
        "model": model.manifest.name,
        "threshold": threshold,
        "images": "CIFAR-10 test" if args.data_root else "random",
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "machine": machine_description(),
        "rows": rows,
    }


def to_markdown(result: dict) -> str:
    lines = [
        f"{result['model']} on the CPU ({result['threads']} threads; {result['machine']}), threshold "
        f"{result['threshold']}, {result['images']} images. Median ms per batch of `Variant.infer`'s model call; "
        f"bucketed / plain is the median over {result['rounds']} rounds in which the two took turns (above 1: the "
        "bucketed executor is slower).",
        "",
        "| batch | plain executor | bucketed executor | bucketed / plain |",
        "|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['batch']} | {r['plain_ms']:.2f} ms | {r['bucketed_ms']:.2f} ms | {r['bucketed_over_plain']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifact", type=Path, default=CHECKPOINTS / "cifar10-resnet32-blockdrop", help="a BlockDrop artifact"
    )
    parser.add_argument("--data-root", help="folder holding cifar-10-batches-py (default: random images)")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds, the executors taking turns")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per figure")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for engine-cpu.json and engine-cpu.md")


def execute(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    write_results(args.out, "engine-cpu", result, to_markdown(result))
    return 0

"""Wall-clock cost of skipping blocks: full forward vs the reference masked multiply vs the gather/scatter executor.

For a CIFAR ResNet (default 110) at each batch size and keep fraction, every image keeps a random subset of
exactly that fraction of blocks. The FLOPs-ideal time is the full forward's time times the FLOPs ratio: what a
perfect executor would take. The three take turns, round after round (``--rounds``); each time is the median
over rounds of ``torch.utils.benchmark`` medians, and each ratio the median over rounds of the ratio within a
round, which a drifting machine disturbs less. Results go to ``bench/results/executor.{json,md}``.

    blockdrop bench executor
"""

from __future__ import annotations

import argparse
import statistics

import torch

from bench.common import RESULTS, machine_description, paired_median_ratio, positive_int, write_results
from models.blockdrop import random_k_mask, run_backbone, run_backbone_masked
from models.flops import measure_flops
from models.resnet import cifar_resnet


def median_seconds(fn, min_run_time: float) -> float:
    # imported here: on a machine without CUDA, importing it logs a warning about CUDA_HOME to every command
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


@torch.no_grad()
def run(depth: int, batch_sizes: list[int], keep_fractions: list[float], min_run_time: float, rounds: int) -> dict:
    torch.manual_seed(0)
    backbone = cifar_resnet(depth).eval()
    table = measure_flops(backbone, (32, 32))
    k_total = backbone.num_blocks
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, 3, 32, 32)
        for fraction in keep_fractions:
            mask = random_k_mask(batch, k_total, round(fraction * k_total), torch.Generator().manual_seed(1))
            flops_ratio = table.per_image(mask, include_policy=False).double().mean().item() / table.full
            ways = {
                "full": lambda x=x: backbone(x),
                "masked": lambda x=x, m=mask: run_backbone_masked(backbone, x, m),
                "executor": lambda x=x, m=mask: run_backbone(backbone, x, m),
            }
            times: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(rounds):
                for name, fn in ways.items():
                    times[name].append(median_seconds(fn, min_run_time))
            full, masked, executor = (statistics.median(times[name]) for name in ways)
            # executor / ideal = executor / (full x FLOPs ratio), within each round
            over_full = paired_median_ratio(times["executor"], times["full"])
            rows.append(
                {
                    "batch": batch,
                    "keep_fraction": fraction,
                    "flops_ratio": round(flops_ratio, 4),
                    "full_ms": round(full * 1e3, 3),
                    "masked_multiply_ms": round(masked * 1e3, 3),
                    "executor_ms": round(executor * 1e3, 3),
                    "flops_ideal_ms": round(full * flops_ratio * 1e3, 3),
                    "executor_over_ideal": round(over_full / flops_ratio, 3),
                    "speedup_vs_full": round(1 / over_full, 3),
                }
            )
            print(
                f"batch {batch:>3} keep {fraction:.0%}: full {full * 1e3:.1f} ms, masked {masked * 1e3:.1f} ms, "
                f"executor {executor * 1e3:.1f} ms, executor / ideal {over_full / flops_ratio:.2f}",
                flush=True,
            )
    return {
        "model": f"CIFAR ResNet-{depth}",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "machine": machine_description(),
        "rows": rows,
    }


def to_markdown(result: dict) -> str:
    lines = [
        f"{result['model']} on {result['device']} ({result['threads']} threads; {result['machine']}). "
        f"Median wall-clock per forward pass over {result['rounds']} rounds in which the three took turns; "
        "executor / ideal is the median over rounds of the ratio within a round. Every image keeps a random subset "
        "of the given fraction of blocks.",
        "",
        "| batch | blocks kept | FLOPs ratio | full | masked multiply (reference) | executor | FLOPs-ideal | "
        "executor / ideal |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['batch']} | {r['keep_fraction']:.0%} | {r['flops_ratio']:.3f} | {r['full_ms']:.1f} ms | "
            f"{r['masked_multiply_ms']:.1f} ms | {r['executor_ms']:.1f} ms | {r['flops_ideal_ms']:.1f} ms | "
            f"{r['executor_over_ideal']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depth", type=int, default=110, help="depth of the CIFAR ResNet timed")
    parser.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--keep", default="0.3,0.5,0.7", help="fractions of blocks each image keeps")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per figure and round")
    parser.add_argument("--rounds", type=positive_int, default=5, help="rounds, the three ways taking turns")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for executor.json and executor.md")


def execute(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(
        args.depth,
        [int(b) for b in args.batch_sizes.split(",")],
        [float(f) for f in args.keep.split(",")],
        args.min_run_time,
        args.rounds,
    )
    write_results(args.out, "executor", result, to_markdown(result))
    return 0

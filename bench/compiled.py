"""BlockDrop against a compiled full network on the CPU: how much of its lead a tuned static network takes back.

Every speed-up the other benchmarks quote on the CPU is over the full network run eagerly, as the service runs it.
A server tuned for the full network alone would compile it: here ``torch.compile`` (Inductor, with the weights
frozen into its kernels, ``torch._inductor.config.freezing``; one graph per batch size) of the served full
network (BatchNorm folded, channels-last). Per pair and batch size, on one torch thread as a worker process has,
the three take turns in each round: the full network eager (``Variant.infer``, the service's call), the full
network compiled (its logits checked against the eager ones; timed alone, without ``Variant.infer``'s masks and
FLOPs bookkeeping, which BlockDrop's figure includes: the comparison leans toward it), and the BlockDrop artifact
eager at its threshold (``Variant.infer``); each ratio is the median over rounds of the ratio within a round.
BlockDrop itself is not compiled: its executor's shapes change with every batch's masks. Results go to
``bench/results/compiled-cpu.{json,md}``:

    blockdrop bench compiled --data-root DIR
"""

from __future__ import annotations

import argparse
import statistics
import time
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
from service.config import VariantSettings
from service.variants import load_variant

PAIRS = {
    "r32": ("cifar10-resnet32-e200", "cifar10-resnet32-blockdrop"),
    "r110": ("cifar10-resnet110", "cifar10-resnet110-blockdrop"),
}
WAYS = ("full_eager", "full_compiled", "blockdrop_eager")
BATCHES_TIMED = 4  # distinct batches of test images, taken in turn


def parse_pair(text: str) -> tuple[str, Path, Path]:
    """``r32`` or ``r110`` (the shipped pairs), or ``NAME=FULL_ARTIFACT,BLOCKDROP_ARTIFACT``."""
    if text in PAIRS:
        full, blockdrop = PAIRS[text]
        return text, CHECKPOINTS / full, CHECKPOINTS / blockdrop
    name, _, paths = text.partition("=")
    full, _, blockdrop = paths.partition(",")
    if not (name and full and blockdrop):
        raise argparse.ArgumentTypeError(f"a pair is r32, r110 or NAME=FULL_ARTIFACT,BLOCKDROP_ARTIFACT; got {text!r}")
    return name, Path(full), Path(blockdrop)


@torch.inference_mode()
def run_pair(name: str, full_path: Path, blockdrop_path: Path, args: argparse.Namespace) -> list[dict]:
    full = load_variant(VariantSettings(name="full", artifact=full_path, mode="full"), "cpu")
    blockdrop = load_variant(VariantSettings(name="blockdrop", artifact=blockdrop_path, mode="blockdrop"), "cpu")
    compiled = torch.compile(full.model.backbone, dynamic=False)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    images = normalised_test_images(full.manifest, args.data_root, BATCHES_TIMED * max(batch_sizes))
    images = images.contiguous(memory_format=full.memory_format)
    rows = []
    for batch in batch_sizes:
        batches = list(images[: BATCHES_TIMED * batch].split(batch))
        started = time.perf_counter()
        logits = compiled(batches[0])  # compiles for this batch size
        compile_s = time.perf_counter() - started
        difference = (logits.float() - full.infer(batches[0]).logits).abs().max().item()
        ways = {"full_eager": full.infer, "full_compiled": compiled, "blockdrop_eager": blockdrop.infer}
        times: dict[str, list[float]] = {way: [] for way in WAYS}
        for _ in range(args.rounds):
            for way, fn in ways.items():
                times[way].append(median_ms(fn, batches, args.min_run_time))
        row = {"pair": name, "batch": batch, "compile_s": round(compile_s, 1), "max_logit_difference": difference}
        row |= {f"{way}_ms": round(statistics.median(times[way]), 3) for way in WAYS}
        row["compiled_over_eager"] = round(paired_median_ratio(times["full_eager"], times["full_compiled"]), 3)
        row["blockdrop_over_full_eager"] = round(paired_median_ratio(times["full_eager"], times["blockdrop_eager"]), 3)
        row["blockdrop_over_full_compiled"] = round(
            paired_median_ratio(times["full_compiled"], times["blockdrop_eager"]), 3
        )
        rows.append(row)
        print(
            f"{name} batch {batch}: full eager {row['full_eager_ms']:.2f} ms, compiled {row['full_compiled_ms']:.2f} "
            f"ms, BlockDrop {row['blockdrop_eager_ms']:.2f} ms; BlockDrop over full compiled "
            f"{row['blockdrop_over_full_compiled']:.2f}x",
            flush=True,
        )
    return rows


def run(args: argparse.Namespace) -> dict:
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # the weights become constants of the compiled kernels (inference only)
    rows = [row for pair in args.pairs for row in run_pair(*pair, args)]
    return {
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "images": "CIFAR-10 test" if args.data_root else "random",
        "machine": machine_description(),
        "rows": rows,
    }


def to_markdown(result: dict) -> str:
    largest = max(r["max_logit_difference"] for r in result["rows"])
    lines = [
        f"On the CPU ({result['threads']} threads; {result['machine']}), {result['images']} images. Median ms per "
        "batch: the full network eager (`Variant.infer`, as served), the full network compiled (`torch.compile`, "
        "Inductor, frozen weights, one graph per batch size; compile time beside it), BlockDrop eager at its "
        f"threshold (`Variant.infer`). Largest logit difference, compiled against eager: {largest:.1e}. Ratios: "
        f"medians over {result['rounds']} rounds of the ratio within a round (above 1: faster than the full network "
        "it is compared with).",
        "",
        "| pair | batch | full eager | full compiled (compile) | BlockDrop eager | compiled over eager | "
        "BlockDrop over full eager | BlockDrop over full compiled |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['pair']} | {r['batch']} | {r['full_eager_ms']:.2f} ms | {r['full_compiled_ms']:.2f} ms "
            f"({r['compile_s']:.0f} s) | {r['blockdrop_eager_ms']:.2f} ms | {r['compiled_over_eager']:.2f}x | "
            f"{r['blockdrop_over_full_eager']:.2f}x | {r['blockdrop_over_full_compiled']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help="folder holding cifar-10-batches-py (default: random images)")
    parser.add_argument(
        "--pair",
        dest="pairs",
        type=parse_pair,
        action="append",
        help="r32, r110, or NAME=FULL_ARTIFACT,BLOCKDROP_ARTIFACT (repeatable; default: r32 and r110)",
    )
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=positive_int, default=5, help="rounds, the three taking turns")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per figure and round")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (a worker process has 1)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for compiled-cpu.json and compiled-cpu.md")


def execute(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    args.pairs = args.pairs or [parse_pair("r32"), parse_pair("r110")]
    result = run(args)
    write_results(args.out, "compiled-cpu", result, to_markdown(result))
    return 0

"""Every served variant on the CIFAR-10 test set: accuracy, mean FLOPs, single-image latency (p50 / p99) and
batch-64 throughput, with the ratios to the full ResNet and to the FLOPs-ideal speed-up.

Results go to ``bench/results/variants.{json,md}``:

    blockdrop bench variants --data-root DIR
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import ValidationError

from bench.common import RESULTS, machine_description, paired_median_ratio, positive_int, write_results
from service.config import VariantSettings
from service.variants import Variant, load_variant

if TYPE_CHECKING:
    from training.data import Normalizer

CHECKPOINTS = Path(__file__).resolve().parent.parent / "models" / "checkpoints"
# shipped checkpoints measured here but not served by default: name -> (artifact folder, mode)
UNSERVED_CHECKPOINTS = {
    "slim60": ("cifar10-resnet32-slim60", "full"),
    "full110": ("cifar10-resnet110", "full"),
    "blockdrop110": ("cifar10-resnet110-blockdrop", "blockdrop"),
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


TIMED = ("latency_p50_ms", "latency_p99_ms", "throughput_batch64")


@torch.inference_mode()
def measure_quality(variant: Variant, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy and mean FLOPs of ``variant.infer``: the service's own inference call, in the memory layout and
    at the threshold the service runs."""
    normalize = _normalizer(variant)
    correct, flops = 0, 0.0
    for start in range(0, len(images), 500):
        result = variant.infer(normalize(images[start : start + 500]))
        correct += (result.logits.argmax(1) == labels[start : start + 500]).sum().item()
        flops += result.flops.double().sum().item()
    return {
        "model": variant.manifest.name,
        "mode": variant.mode,
        "threshold": variant.threshold if variant.mode == "blockdrop" else None,
        "channels_last": variant.memory_format == torch.channels_last,
        "accuracy": correct / len(images),
        "flops_mean": flops / len(images),
    }


@torch.inference_mode()
def time_variant(variant: Variant, images: torch.Tensor, latency_images: int, throughput_batches: int) -> dict:
    """One round of timing: single-image p50 / p99 latency and batch-64 throughput."""
    normalize, infer = _normalizer(variant), variant.infer
    singles = normalize(images[:latency_images])
    for i in range(min(20, latency_images)):  # warm-up
        infer(singles[i : i + 1])
    latencies = []
    for i in range(latency_images):
        started = time.perf_counter()
        infer(singles[i : i + 1])
        latencies.append(time.perf_counter() - started)

    batches = [normalize(images[i * 64 : (i + 1) * 64]) for i in range(throughput_batches)]
    infer(batches[0])
    started = time.perf_counter()
    for batch in batches:
        infer(batch)
    return {
        "latency_p50_ms": percentile(latencies, 50) * 1e3,
        "latency_p99_ms": percentile(latencies, 99) * 1e3,
        "throughput_batch64": 64 * len(batches) / (time.perf_counter() - started),
    }


def _normalizer(variant: Variant) -> Normalizer:
    from training.data import Normalizer

    return Normalizer(variant.manifest.input.mean, variant.manifest.input.std)


def run(
    variants: dict[str, VariantSettings],
    data_root: str | None,
    limit: int | None,
    latency_images: int,
    throughput_batches: int,
    channels_last: bool | None = None,
    repeats: int = 1,
) -> dict:
    """Accuracy and FLOPs once per variant, then ``repeats`` rounds of timing with the variants taking turns, so
    that a machine whose speed drifts disturbs every variant alike. Each timed figure is the median over the
    rounds; each speed-up the median of the ratios to the full variant's figure of the same round."""
    from training.data import load_cifar

    test = load_cifar(data_root, "test")
    images, labels = test.images[:limit], test.labels[:limit]
    loaded, rows = {}, {}
    for name, settings in variants.items():
        print(f"loading {name} ({settings.artifact.name}, {settings.mode}); accuracy and FLOPs", flush=True)
        loaded[name] = load_variant(settings, "cpu", channels_last)
        rows[name] = measure_quality(loaded[name], images, labels)
    rounds: dict[str, list[dict]] = {name: [] for name in loaded}
    for round_index in range(repeats):
        for name, variant in loaded.items():
            print(f"timing {name}, round {round_index + 1}/{repeats}", flush=True)
            rounds[name].append(time_variant(variant, images, latency_images, throughput_batches))
    for name, row in rows.items():
        row.update({key: statistics.median(r[key] for r in rounds[name]) for key in TIMED})
        row.update({f"{key}_each": [r[key] for r in rounds[name]] for key in TIMED})
    full = rows.get("full")
    for row in rows.values():
        if full is not None:
            row["flops_ideal_speedup"] = full["flops_mean"] / row["flops_mean"]
            row["latency_speedup"] = paired_median_ratio(full["latency_p50_ms_each"], row["latency_p50_ms_each"])
            row["throughput_speedup"] = paired_median_ratio(
                row["throughput_batch64_each"], full["throughput_batch64_each"]
            )
    return {
        "images": len(images),
        "threads": torch.get_num_threads(),
        "machine": machine_description(),
        "repeats": repeats,
        "rows": rows,
    }


def to_markdown(result: dict) -> str:
    lines = [
        f"CIFAR-10 test set ({result['images']} images); CPU, {result['threads']} threads, "
        f"{_layout_words(result)}; {result['machine']}. "
        "Latency: one image at a time; throughput: batches of 64. Speed-ups are against the `full` variant; "
        "FLOPs-ideal is the full network's FLOPs over the variant's." + _rounds_words(result),
        "",
        "| variant | model | accuracy | mean FLOPs | p50 latency | p99 latency | batch-64 throughput | "
        "latency speed-up | throughput speed-up | FLOPs-ideal speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["rows"].items():
        lines.append(
            f"| {name} | {r['model']} | {r['accuracy'] * 100:.2f}% | {r['flops_mean']:.3g} | "
            f"{r['latency_p50_ms']:.2f} ms | {r['latency_p99_ms']:.2f} ms | {r['throughput_batch64']:.0f} img/s | "
            f"{r.get('latency_speedup', 1):.2f}x | {r.get('throughput_speedup', 1):.2f}x | "
            f"{r.get('flops_ideal_speedup', 1):.2f}x |"
        )
    return "\n".join(lines) + "\n"


def _rounds_words(result: dict) -> str:
    repeats = result.get("repeats", 1)
    if repeats == 1:
        return ""
    return (
        f" Timings: the median of {repeats} rounds, the variants taking turns; speed-ups: the median of the "
        "ratios within each round."
    )


def _layout_words(result: dict) -> str:
    if result.get("layout") == "nchw":
        return "NCHW memory layout"
    return "the service's memory layout (channels-last)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help="folder holding cifar-10-batches-py (default: $BLOCKDROP_DATA_ROOT)")
    add_variant_option(
        parser,
        "benchmark this artifact folder (repeatable); default: the service's default variants and "
        + ", ".join(f"{name} ({folder})" for name, (folder, _) in UNSERVED_CHECKPOINTS.items()),
    )
    parser.add_argument("--limit", type=int, help="use only the first N test images")
    parser.add_argument("--latency-images", type=int, default=300, help="images timed one at a time")
    parser.add_argument("--throughput-batches", type=int, default=20, help="batches of 64 timed")
    parser.add_argument(
        "--repeats", type=positive_int, default=1, help="timing rounds, the variants taking turns; figures are medians"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument(
        "--layout",
        choices=["served", "nchw"],
        default="served",
        help="served: the memory layout the service runs on CPU (channels-last); nchw: the plain layout",
    )
    parser.add_argument("--out", default=str(RESULTS), help="folder for variants.json and variants.md")


VARIANT_SPEC = "NAME=ARTIFACT:MODE[@THRESHOLD]"


def add_variant_option(parser: argparse.ArgumentParser, help: str) -> None:
    help += "; MODE blockdrop or full, @THRESHOLD overrides a blockdrop artifact's policy threshold"
    parser.add_argument("--variant", action="append", default=[], metavar=VARIANT_SPEC, help=help)


def parse_variants(specs: list[str], unserved: bool = False) -> dict[str, VariantSettings]:
    """``NAME=ARTIFACT:MODE[@THRESHOLD]`` specs as the service's variant settings; with none, the service's
    default variants (and, if asked, the shipped checkpoints it does not serve)."""
    if not specs:
        from service.config import default_variants

        variants = {v.name: v for v in default_variants()}
        if unserved:
            variants |= {
                name: VariantSettings(name=name, artifact=CHECKPOINTS / folder, mode=mode)
                for name, (folder, mode) in UNSERVED_CHECKPOINTS.items()
            }
        return {name: v for name, v in variants.items() if (v.artifact / "manifest.json").exists()}
    return {variant.name: variant for variant in map(_parse_variant, specs)}


def _parse_variant(spec: str) -> VariantSettings:
    name, _, rest = spec.partition("=")
    path, _, mode_threshold = rest.rpartition(":")
    mode, _, threshold = mode_threshold.partition("@")
    problem = f"--variant {spec!r}: expected {VARIANT_SPEC} with MODE blockdrop or full"
    # MODE and THRESHOLD values are checked by VariantSettings itself, below
    if not name or not path or (threshold and mode != "blockdrop"):
        raise ValueError(problem + (", THRESHOLD only with blockdrop" if threshold else ""))
    try:
        return VariantSettings(name=name, artifact=Path(path), mode=mode, threshold=threshold or None)
    except ValidationError as error:
        raise ValueError(f"{problem}: {error.errors()[0]['msg']}") from None


def execute(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = parse_variants(args.variant, unserved=True)
    if not variants:
        raise ValueError("no variants to benchmark: no shipped checkpoints found and no --variant given")
    channels_last = False if args.layout == "nchw" else None
    result = run(
        variants, args.data_root, args.limit, args.latency_images, args.throughput_batches, channels_last, args.repeats
    )
    result["layout"] = args.layout
    name = "variants" if args.layout == "served" else f"variants-{args.layout}"
    write_results(args.out, name, result, to_markdown(result))
    return 0

"""How often a whole-backbone graph would be replayed: the signature cache's hit rate on the test images in order.

For each shipped BlockDrop policy at its artifact's threshold, the signatures that the bucketed engine would meet
(batch bucket and each block's kind; at batch 1 the mask) over the CIFAR-10 test set, one batch of consecutive
images after another, and per cache size the share of batches that would replay a kept graph and how many
captures it took, for the engine's admission by frequency (``models/signatures.py``) against the rule it
replaced (kept from the second sighting, least recently used dropped), and at batch 1 for a cache first filled with
the artifact's recorded ``frequent_masks`` (on the training images, as the service captures them at start-up).
Pure host work: no GPU, no timing.

    blockdrop bench signatures --data-root DIR
"""

from __future__ import annotations

import argparse
from collections import Counter, OrderedDict
from pathlib import Path

from torch import Tensor, nn

from bench.common import RESULTS, write_results
from bench.gpu import CHECKPOINTS
from models import load_artifact
from models.engine import BucketedEngine
from models.signatures import SignatureCache, recorded_masks
from training.data import DATA_ROOT_ENV, load_cifar
from training.masks import policy_masks

POLICIES = ["cifar10-resnet32-blockdrop", "cifar10-resnet110-blockdrop", "cifar10-resnet32-slim-blockdrop"]


def signatures(model: nn.Module, masks: Tensor, batch: int) -> list[tuple]:
    """The engine's signature for each batch of ``batch`` consecutive masks (the last partial batch left out)."""
    engine = BucketedEngine(model, batch)
    keys = []
    for mask in masks[: len(masks) // batch * batch].split(batch):
        keys.append((batch, tuple(engine.kinds(mask, batch))))
    return keys


def prefill_keys(model: nn.Module) -> list[tuple] | None:
    """The batch-1 signatures of the artifact's recorded ``frequent_masks`` (most frequent first), which the engine
    captures at start-up; None where the artifact records none or at another threshold than it serves."""
    masks = recorded_masks(model.manifest, model.manifest.threshold)
    if masks is None:
        return None
    engine = BucketedEngine(model, 1)
    return [engine.signature_of(mask.view(1, -1)) for mask in masks]


def by_frequency(keys: list[tuple], capacity: int, prefill: list[tuple] | None = None) -> tuple[float, int]:
    """Hit rate and captures of ``SignatureCache`` (the engine's rule) over ``keys``, the cache first filled with
    ``prefill`` (as at start-up; those captures counted too)."""
    cache: SignatureCache[bool] = SignatureCache(capacity)
    captures = 0
    for key in prefill or []:
        captures += cache.prefill(key, True)
    for key in keys:
        if cache.get(key) is None and cache.wants(key):
            cache.put(key, True)
            captures += 1
    return cache.hit_rate, captures


def by_recency(keys: list[tuple], capacity: int) -> tuple[float, int]:
    """The rule before: kept from the second sighting, the least recently used dropped."""
    kept: OrderedDict[tuple, bool] = OrderedDict()
    seen: Counter[tuple] = Counter()
    hits = captures = 0
    for key in keys:
        if key in kept:
            hits += 1
            kept.move_to_end(key)
            continue
        seen[key] += 1
        if seen[key] >= 2:
            kept[key] = True
            captures += 1
            if len(kept) > capacity:
                kept.popitem(last=False)
    return hits / len(keys), captures


def run(args: argparse.Namespace) -> dict:
    images = load_cifar(args.data_root, "test").images
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    capacities = [int(c) for c in args.capacities.split(",")]
    rows = []
    for name in args.policy or POLICIES:
        path = Path(name) if Path(name).exists() else CHECKPOINTS / name
        model = load_artifact(path).eval()
        masks = policy_masks(model, images)
        prefill = prefill_keys(model)
        for batch in batch_sizes:
            keys = signatures(model, masks, batch)
            row = {"policy": path.name, "batch": batch, "batches": len(keys), "distinct": len(set(keys)), "caches": []}
            for capacity in capacities:
                hit_rate, captures = by_frequency(keys, capacity)
                before_rate, before_captures = by_recency(keys, capacity)
                cache = {
                    "capacity": capacity,
                    "hit_rate": round(hit_rate, 4),
                    "captures": captures,
                    "hit_rate_by_recency": round(before_rate, 4),
                    "captures_by_recency": before_captures,
                    "hit_rate_prefilled": None,  # at batch 1, with the artifact's frequent masks captured first
                    "captures_prefilled": None,
                }
                if prefill is not None and batch == 1:
                    prefilled_rate, prefilled_captures = by_frequency(keys, capacity, prefill)
                    cache["hit_rate_prefilled"] = round(prefilled_rate, 4)
                    cache["captures_prefilled"] = prefilled_captures
                row["caches"].append(cache)
            rows.append(row)
            print(f"{path.name} batch {batch}: {row['distinct']} distinct signatures in {len(keys)} batches")
    return {"images": len(images), "rows": rows}


def to_markdown(result: dict) -> str:
    lines = [
        f"Signatures the bucketed engine meets over the {result['images']} CIFAR-10 test images in order, each policy "
        "at its artifact's threshold; per cache size, the share of batches that replay a kept whole-backbone graph "
        "and the captures it took: admission by frequency (the engine's) against the rule before (kept from the "
        "second sighting, least recently used dropped), and at batch 1 the engine's rule with the cache first filled "
        "with the artifact's most frequent masks on the training images (`frequent_masks`, captured at start-up; "
        "captures include those). `blockdrop bench signatures`.",
        "",
        "| policy | batch | distinct / batches | cache | hit rate | captures | before: hit rate | captures "
        "| prefilled: hit rate | captures |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        for c in r["caches"]:
            prefilled = c.get("hit_rate_prefilled")
            lines.append(
                f"| {r['policy']} | {r['batch']} | {r['distinct']} / {r['batches']} | {c['capacity']} | "
                f"{c['hit_rate']:.1%} | {c['captures']} | {c['hit_rate_by_recency']:.1%} | {c['captures_by_recency']} "
                + (f"| {prefilled:.1%} | {c['captures_prefilled']} |" if prefilled is not None else "| — | — |")
            )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help=f"folder holding cifar-10-batches-py (default: ${DATA_ROOT_ENV})")
    parser.add_argument("--policy", action="append", help="a BlockDrop artifact (repeatable; default: the shipped)")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--capacities", default="64,256,1024", help="comma-separated cache sizes")
    parser.add_argument("--out", default=str(RESULTS), help="folder for signatures.json and signatures.md")


def execute(args: argparse.Namespace) -> int:
    result = run(args)
    write_results(args.out, "signatures", result, to_markdown(result))
    return 0

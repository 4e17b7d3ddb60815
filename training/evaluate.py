"""Evaluation of a model on an image set: accuracy, blocks, FLOPs and distinct policies, and the paper's Table 1
(the full network, FirstK, RandomK and BlockDrop) with a threshold sweep."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from models.blockdrop import Mode
from training.data import ImageSet, Normalizer, iterate_batches


@torch.no_grad()
def evaluate_blockdrop(
    model: nn.Module,
    data: ImageSet,
    normalize: Normalizer,
    mode: Mode | str | None = None,
    threshold: float = 0.5,
    k: int | None = None,
    seed: int = 0,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Accuracy, mean / std blocks used, mean FLOPs per image and number of distinct masks (the model must be on
    ``device``)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    correct, blocks, flops, masks = [], [], [], set()
    for images, labels in iterate_batches(data, batch_size, shuffle=False, augment=False):
        x = normalize(images.to(device, non_blocking=True))
        result = model.infer(x, threshold=threshold, mode=mode, k=k, generator=generator)
        correct.append(result.logits.argmax(1) == labels.to(device))
        blocks.append(result.keep_mask.sum(1).float())
        flops.append(result.flops.double())
        masks.update("".join("1" if b else "0" for b in row) for row in result.keep_mask.tolist())
    blocks_used = torch.cat(blocks)
    return {
        "accuracy": torch.cat(correct).float().mean().item(),
        "blocks_mean": blocks_used.mean().item(),
        "blocks_std": blocks_used.std().item() if len(blocks_used) > 1 else 0.0,
        "flops_mean": torch.cat(flops).mean().item(),
        "distinct_policies": len(masks),
    }


class Passes:
    """Counts the passes over the data a long evaluation makes and says each one as it ends (``report``, a line
    each: what a person waiting, or a log, sees move), with the time it took."""

    def __init__(self, total: int, report: Callable[[str], None] | None):
        self.total, self.done, self.report = total, 0, report

    def run(self, what: str, evaluate: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        started = time.monotonic()
        row = evaluate()
        self.done += 1
        if self.report is not None:
            self.report(f"{what}: {row['accuracy']:.2%} ({self.done}/{self.total}, {time.monotonic() - started:.1f} s)")
        return row


def evaluate_table(
    model,
    data,
    threshold: float,
    sweep: list[float],
    seed: int,
    random_k: Sequence[int] = (),
    device: torch.device | str = "cpu",
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The paper's Table 1 rows, RandomK at each of ``random_k``, and the threshold ``sweep``; ``report`` hears of
    each pass over ``data`` as it ends."""
    normalize = Normalizer(model.manifest.input.mean, model.manifest.input.std).to(device)
    has_policy = getattr(model, "policy", None) is not None
    passes = Passes(1 + len(random_k) + (3 + len(sweep) if has_policy else 0), report)

    def evaluate(model, data, normalize, **how) -> dict[str, Any]:
        what = f"{how['mode']}" + "".join(f" {k}={how[k]}" for k in ("k", "threshold") if k in how)
        return passes.run(what, lambda: evaluate_blockdrop(model, data, normalize, device=device, **how))

    rows = {"full": evaluate(model, data, normalize, mode="full")}
    result: dict[str, Any] = {"images": len(data), "full_network_flops": model.flops_table.full, "rows": rows}
    if random_k:
        result["random_k_sweep"] = [
            {"k": k} | evaluate(model, data, normalize, mode="random_k", k=k, seed=seed) for k in random_k
        ]
    if not has_policy:
        return result
    blockdrop = evaluate(model, data, normalize, mode="policy", threshold=threshold)
    k = round(blockdrop["blocks_mean"])
    rows["first_k"] = evaluate(model, data, normalize, mode="first_k", k=k)
    rows["random_k"] = evaluate(model, data, normalize, mode="random_k", k=k, seed=seed)
    rows["blockdrop"] = blockdrop
    result |= {"k": k, "threshold": threshold}
    result["sweep"] = [{"threshold": t} | evaluate(model, data, normalize, mode="policy", threshold=t) for t in sweep]
    return result


def precision_summary(result: dict[str, Any]) -> dict[str, Any]:
    """What ``eval --record`` keeps per precision: where it ran, on how many images, each row's accuracy and
    mean blocks."""
    rows = {
        name: {"accuracy": row["accuracy"], "blocks_mean": row["blocks_mean"]} for name, row in result["rows"].items()
    }
    return {"device": result.get("device", "cpu"), "images": result["images"], "rows": rows}


def format_table(name: str, split: str, result: dict[str, Any]) -> str:
    full_flops = result["full_network_flops"]
    lines = [
        f"{name} on {split} ({result['images']} images); FLOPs include the policy where it runs",
        f"{'model':<12} {'accuracy':>9} {'blocks':>14} {'FLOPs':>10} {'of full':>8} {'policies':>9}",
    ]
    labels = {
        "full": "Full network",
        "first_k": f"FirstK={result.get('k')}",
        "random_k": f"RandomK={result.get('k')}",
        "blockdrop": "BlockDrop",
    }
    for key, row in result["rows"].items():
        lines.append(_row(labels[key], row, full_flops))
    if result.get("random_k_sweep"):
        lines += ["", "blocks chosen at random:"]
        lines += [_row(f"RandomK={row['k']}", row, full_flops) for row in result["random_k_sweep"]]
    if result.get("sweep"):
        lines += ["", "threshold sweep:"]
        lines += [_row(f"t={row['threshold']:g}", row, full_flops) for row in result["sweep"]]
    return "\n".join(lines)


def _row(label: str, row: dict[str, float], full_flops: int) -> str:
    blocks = f"{row['blocks_mean']:.2f} ± {row['blocks_std']:.2f}"
    return (
        f"{label:<12} {row['accuracy'] * 100:>8.2f}% {blocks:>14} {row['flops_mean']:>10.3g} "
        f"{row['flops_mean'] / full_flops * 100:>7.1f}% {row['distinct_policies']:>9}"
    )

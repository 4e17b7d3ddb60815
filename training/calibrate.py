"""The accuracy / compute curve of a BlockDrop model: accuracy and mean FLOPs (the policy included) at each policy
threshold of a grid, measured on the validation split, so that a compute budget maps to a threshold without the
test set ever being read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from models.blockdrop import BlockDropModel
from training.data import ImageSet, Normalizer
from training.evaluate import Passes, evaluate_blockdrop


def threshold_grid(start: float, stop: float, step: float) -> list[float]:
    """``start``, ``start + step``, … up to ``stop`` (included), rounded to 6 digits; thresholds lie in (0, 1)."""
    if not 0 < start <= stop < 1 or step <= 0:
        raise ValueError(f"the threshold grid needs 0 < start <= stop < 1 and step > 0, got {start}:{stop}:{step}")
    count = round((stop - start) / step) + 1
    return [round(start + i * step, 6) for i in range(count) if start + i * step <= stop + 1e-9]


@torch.no_grad()
def calibration_curve(
    model: BlockDropModel,
    data: ImageSet,
    normalize: Normalizer,
    thresholds: Sequence[float],
    report: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One point per threshold: accuracy, mean blocks, mean FLOPs and their fraction of the full network's;
    ``report`` hears of each as it is measured."""
    if getattr(model, "policy", None) is None:
        raise ValueError(f"{model.manifest.name} has no policy: only BlockDrop artifacts have a compute dial")
    full = model.flops_table.full
    points = []
    passes = Passes(len(thresholds), report)
    for threshold in sorted(thresholds):
        row = passes.run(
            f"threshold {threshold:g}",
            lambda t=threshold: evaluate_blockdrop(model, data, normalize, mode="policy", threshold=t),
        )
        points.append(
            {
                "threshold": threshold,
                "accuracy": row["accuracy"],
                "blocks_mean": row["blocks_mean"],
                "flops_mean": row["flops_mean"],
                "flops_fraction": row["flops_mean"] / full,
            }
        )
    return points

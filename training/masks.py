"""The masks a BlockDrop policy draws on a data set, and the record of its most frequent ones that an artifact
carries (``frequent_masks`` in its manifest): the CUDA engine captures one whole-backbone graph for each at
start-up, so those masks replay one graph from the first request on (models/signatures.py)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from models.signatures import format_counted_masks, most_frequent
from training.data import Normalizer


@torch.inference_mode()
def policy_masks(model: nn.Module, images: Tensor, threshold: float | None = None, batch_size: int = 1000) -> Tensor:
    """The masks [n, K] that ``model``'s policy draws for raw ``images`` [n, 3, H, W] at ``threshold`` (default: the
    artifact's), normalised as its manifest says."""
    if getattr(model, "policy", None) is None:
        raise ValueError(f"{model.manifest.name} has no policy: only BlockDrop artifacts draw masks")
    threshold = model.manifest.threshold if threshold is None else threshold
    normalize = Normalizer(model.manifest.input.mean, model.manifest.input.std)
    batches = images.split(batch_size)
    progress = tqdm(batches, desc="policy masks", unit="batch", leave=False, disable=len(batches) < 10)
    return torch.cat([model.policy(normalize(x)) >= threshold for x in progress])


def frequent_masks_record(masks: Tensor, threshold: float, top: int, **provenance: Any) -> dict[str, Any]:
    """The manifest's ``frequent_masks``: the ``top`` most frequent of ``masks`` with their counts (``HEX:COUNT``,
    most frequent first, in one line), the threshold they were drawn at, how many images, how many distinct masks,
    and the share of images whose mask is listed; ``provenance`` (split, command, ...) is kept beside them."""
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    ranked = most_frequent(masks, top)
    return {
        **provenance,
        "threshold": threshold,
        "images": len(masks),
        "distinct": len(torch.unique(masks, dim=0)),
        "kept": len(ranked),
        "covered": round(sum(count for _, count in ranked) / len(masks), 4),
        "masks": format_counted_masks(ranked),
    }

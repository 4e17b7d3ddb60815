"""Evaluation of a BlockDrop model on an image set: accuracy, blocks, FLOPs and distinct policies (Table 1)."""

from __future__ import annotations

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

"""A variant: a name, a loaded artifact, a mode and a threshold. Every variant answers
``infer(batch) -> logits, keep mask, FLOPs per image``; a plain network's mask is all ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models import load_artifact
from models.artifacts import ArtifactError, Manifest
from models.blockdrop import InferenceResult, Mode
from models.folding import fold_batchnorm as fold_batchnorm_into_convs
from service.config import VariantSettings


@dataclass
class Variant:
    name: str
    model: nn.Module
    mode: str  # "blockdrop" | "full"
    threshold: float
    device: str
    memory_format: torch.memory_format = torch.contiguous_format

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    @property
    def num_blocks(self) -> int:
        return self.model.num_blocks

    @property
    def full_flops(self) -> int:
        return self.model.flops_table.full

    @property
    def stage_blocks(self) -> list[int]:
        """Residual blocks per stage, in mask order (one stage holding them all for a model that does not say)."""
        return list(getattr(self.model, "stage_blocks", (self.num_blocks,)))

    @property
    def has_policy(self) -> bool:
        """Whether a policy decides this variant's blocks (a policy artifact served as ``full`` has none at work)."""
        return self.mode == "blockdrop" and getattr(self.model, "policy", None) is not None

    @torch.inference_mode()
    def infer(self, batch: Tensor, thresholds: Tensor | None = None) -> InferenceResult:
        """Logits, masks and FLOPs for ``batch``; ``thresholds`` (one per row, NaN for the default) override the
        variant's policy threshold row by row; a plain network ignores them."""
        mode = Mode.POLICY if self.mode == "blockdrop" else Mode.FULL
        batch = batch.to(self.device, memory_format=self.memory_format)
        threshold: float | Tensor = self.threshold
        if thresholds is not None and mode is Mode.POLICY:
            threshold = torch.where(thresholds.isnan(), self.threshold, thresholds)
        result = self.model.infer(batch, threshold=threshold, mode=mode)
        return InferenceResult(result.logits.float().cpu(), result.keep_mask.cpu(), result.flops.cpu())

    @torch.inference_mode()
    def policy_decision(self, image: Tensor, threshold: float) -> tuple[list[float], list[bool]]:
        """The policy's keep-probability of each block for one preprocessed image [3, H, W], and the mask that
        ``threshold`` draws from them (compared as ``infer`` compares, in the policy's precision); runs the policy
        alone, in the calling thread."""
        if not self.has_policy:
            raise ValueError(f"variant {self.name!r} has no policy at work")
        batch = image.unsqueeze(0).to(self.device, memory_format=self.memory_format)
        probabilities = self.model.policy(batch)[0]
        return probabilities.float().cpu().tolist(), (probabilities >= threshold).cpu().tolist()

    def summary(self) -> dict[str, Any]:
        manifest = self.manifest
        return {
            "name": self.name,
            "model": manifest.name,
            "kind": manifest.kind,
            "mode": self.mode,
            "threshold": self.threshold if self.mode == "blockdrop" else None,
            "device": self.device,
            "architecture": manifest.architecture,
            "classes": len(manifest.classes),
            "input": {"height": manifest.input.height, "width": manifest.input.width},
            "blocks": self.num_blocks,
            "stages": self.stage_blocks,
            "flops": {"full": self.full_flops, "policy": self.model.flops_table.policy},
            "metrics": _headline_metrics(manifest.metrics),
            # the accuracy / FLOPs curve on validation, for BlockDrop variants whose artifact carries one
            "calibration": manifest.calibration.get("points") if self.mode == "blockdrop" else None,
        }


def _headline_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The measured test figures (or validation, if no test run was recorded), without the sweep tables."""
    figures: dict[str, Any] = {}
    for split in ("test", "val"):
        table = metrics.get(split)
        if isinstance(table, dict) and "rows" in table:
            figures[split] = table["rows"]
    return figures or {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def load_variant(
    settings: VariantSettings, device: str, channels_last: bool | None = None, fold_batchnorm: bool = True
) -> Variant:
    """Load the variant's artifact onto ``device``. ``channels_last`` (default: on CPU) sets the memory layout the
    model runs in: oneDNN's CPU convolutions are faster in it (bench/results/variants.md compares both).
    ``fold_batchnorm`` merges every BatchNorm into its convolution (``models/folding.py``)."""
    try:
        model = load_artifact(settings.artifact, device=device)
    except ArtifactError as error:
        raise ArtifactError(f"variant {settings.name!r}: {error}") from None
    if settings.mode == "blockdrop" and getattr(model, "policy", None) is None:
        raise ArtifactError(f"variant {settings.name!r}: mode 'blockdrop' needs an artifact with a policy")
    threshold = settings.threshold
    if threshold is None:
        threshold = float(model.manifest.defaults.get("threshold", 0.5))
    if channels_last is None:
        channels_last = device == "cpu"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.eval()
    if fold_batchnorm:
        fold_batchnorm_into_convs(model)
    model.to(memory_format=memory_format)
    return Variant(settings.name, model, settings.mode, threshold, device, memory_format)

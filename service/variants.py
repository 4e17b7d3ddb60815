"""A variant: a name, a loaded artifact, a mode and a threshold. Every variant answers
``infer(batch) -> logits, keep mask, FLOPs per image``; a plain network's mask is all ones."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models import load_artifact
from models.artifacts import ArtifactError, Manifest, verified_manifest
from models.blockdrop import BlockDropModel, InferenceResult, Mode
from models.engine import BucketedEngine
from models.folding import fold_batchnorm as fold_batchnorm_into_convs
from models.precision import apply_precision, resolve_precision
from models.signatures import recorded_masks
from service.config import Settings, VariantSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutionOptions:
    """How a variant's model runs (the service's ``precision``, ``executor`` and ``cuda_graphs`` settings)."""

    precision: str = "auto"  # auto | fp32 | bf16 | fp16: the backbone's; the policy stays fp32
    executor: Literal["plain", "bucketed"] = "plain"
    cuda_graphs: bool = False  # on CUDA: the bucketed executor with its pieces captured in CUDA graphs
    capture_budget_s: float = 60.0
    max_batch_size: int = 32
    signature_graphs: int = 0  # with cuda_graphs: whole-backbone graphs kept per signature (0: off)
    capture_budget_mb: int = 4096

    @classmethod
    def from_settings(cls, settings: Settings) -> ExecutionOptions:
        return cls(
            settings.precision,
            settings.executor,
            settings.cuda_graphs,
            settings.cuda_graph_capture_s,
            settings.max_batch_size,
            settings.cuda_signature_graphs,
            settings.cuda_graph_capture_mb,
        )


class _PinnedStaging:
    """Page-locked host buffers for one batch in and one out: a copy from them runs without the driver staging it
    through a buffer of its own, and without waiting for the GPU's queue."""

    def __init__(self, max_batch: int, input_shape: tuple[int, ...], num_classes: int):
        self.images = torch.empty((max_batch, *input_shape), pin_memory=True)
        self.logits = torch.empty((max_batch, num_classes), pin_memory=True)

    def upload(self, batch: Tensor) -> Tensor:
        """``batch`` in pinned memory (the caller sends it on with ``non_blocking=True``)."""
        if len(batch) > len(self.images):
            return batch
        staged = self.images[: len(batch)]
        staged.copy_(batch)
        return staged

    def download(self, logits: Tensor) -> Tensor:
        if len(logits) > len(self.logits):
            return logits.float().cpu()
        out = self.logits[: len(logits)]
        out.copy_(logits)  # waits for the GPU: the batch's answer
        return out.clone()


@dataclass
class Variant:
    name: str
    model: nn.Module
    mode: str  # "blockdrop" | "full"
    threshold: float
    device: str
    memory_format: torch.memory_format = torch.contiguous_format
    precision: str = "fp32"
    engine: BucketedEngine | None = None  # the bucketed executor, when it is chosen
    cuda_graphs: bool = False  # whether the engine's pieces are captured (in the process that runs the model)
    staging: _PinnedStaging | None = field(default=None, repr=False)  # on CUDA

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
        threshold: float | Tensor = self.threshold
        if thresholds is not None and mode is Mode.POLICY:
            threshold = torch.where(thresholds.isnan(), self.threshold, thresholds)
        if self.staging is not None:  # on CUDA: one copy in, one out
            batch = self.staging.upload(batch)
        if self.engine is not None and len(batch) <= self.engine.max_batch:
            result = self.engine.infer(batch, threshold=threshold, mode=mode)
        else:
            batch = batch.to(self.device, memory_format=self.memory_format, non_blocking=True)
            result = self.model.infer(batch, threshold=threshold, mode=mode)
        logits = self.staging.download(result.logits) if self.staging is not None else result.logits.float().cpu()
        return InferenceResult(logits, result.keep_mask.cpu(), result.flops.cpu())

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
            "precision": self.precision,
            "executor": "bucketed" if self.engine is not None else "plain",
            "cuda_graphs": self.cuda_graphs,
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


def _no_policy(settings: VariantSettings) -> ArtifactError:
    return ArtifactError(f"variant {settings.name!r}: mode 'blockdrop' needs an artifact with a policy")


def check_artifacts(variants: Iterable[VariantSettings]) -> None:
    """Refuse, before any server process starts, what loading the variants would refuse later in each of them:
    an artifact folder without a readable manifest, a file missing or not matching its hash, mode 'blockdrop'
    without a policy (an ``ArtifactError`` naming the variant). Reads manifests and hashes files; loads no model."""
    for settings in variants:
        try:
            manifest = verified_manifest(Path(settings.artifact))
        except ArtifactError as error:
            raise ArtifactError(f"variant {settings.name!r}: {error}") from None
        if settings.mode == "blockdrop" and not manifest.architecture.get("policy"):
            raise _no_policy(settings)


def load_variant(
    settings: VariantSettings,
    device: str,
    channels_last: bool | None = None,
    fold_batchnorm: bool = True,
    execution: ExecutionOptions | None = None,
    capture: bool = True,
) -> Variant:
    """Load the variant's artifact onto ``device``. ``channels_last`` (default: on CPU, and on CUDA below fp32) sets
    the memory layout the model runs in: oneDNN's CPU convolutions are faster in it (bench/results/variants.md
    compares both), as are a GPU's bf16 / fp16 tensor cores. ``fold_batchnorm`` merges every BatchNorm into its
    convolution (``models/folding.py``). ``execution`` chooses precision and executor; ``capture`` False leaves
    CUDA graphs to the process that will run the model (this one only describes it)."""
    execution = execution or ExecutionOptions()
    try:
        model = load_artifact(settings.artifact, device=device)
    except ArtifactError as error:
        raise ArtifactError(f"variant {settings.name!r}: {error}") from None
    if settings.mode == "blockdrop" and getattr(model, "policy", None) is None:
        raise _no_policy(settings)
    threshold = settings.threshold
    if threshold is None:
        threshold = model.manifest.threshold
    # precision applies to BlockDrop models and plain ResNets; other families (Big-Little) stay fp32
    precision = resolve_precision(execution.precision, device) if isinstance(model, BlockDropModel) else "fp32"
    if channels_last is None:
        channels_last = device == "cpu" or precision != "fp32"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.eval()
    if fold_batchnorm:
        fold_batchnorm_into_convs(model)
    apply_precision(model, precision)
    model.to(memory_format=memory_format)
    variant = Variant(settings.name, model, settings.mode, threshold, device, memory_format, precision)
    on_cuda = torch.device(device).type == "cuda"
    if isinstance(model, BlockDropModel) and (execution.executor == "bucketed" or (on_cuda and execution.cuda_graphs)):
        variant.cuda_graphs = on_cuda and execution.cuda_graphs
        signatures = execution.signature_graphs if variant.cuda_graphs else 0
        variant.engine = BucketedEngine(model, execution.max_batch_size, memory_format, signatures)
        if variant.cuda_graphs and capture:
            _capture(variant, settings, execution)
    if on_cuda:
        input_shape = (3, model.manifest.input.height, model.manifest.input.width)
        variant.staging = _PinnedStaging(execution.max_batch_size, input_shape, len(model.manifest.classes))
    return variant


def _capture(variant: Variant, settings: VariantSettings, execution: ExecutionOptions) -> None:
    """Capture the variant's pieces in CUDA graphs; where CUDA refuses, the variant runs as with ``cuda_graphs`` off
    (and says so in ``/v1/models``) rather than not at all."""
    mode = Mode.POLICY if settings.mode == "blockdrop" else Mode.FULL
    budget_bytes = execution.capture_budget_mb * 2**20
    try:
        report = variant.engine.capture(None, execution.capture_budget_s, mode, budget_bytes)
    except RuntimeError:
        log.exception("variant %s: capturing CUDA graphs failed; it runs without them", settings.name)
        variant.engine.release_graphs()
        variant.engine.signature_graphs = 0
        variant.cuda_graphs = False
        if execution.executor != "bucketed":  # the executor it would have had with graphs off
            variant.engine = None
        return
    if variant.engine.signature_graphs and mode is Mode.POLICY:
        _prefill_signatures(variant, execution.capture_budget_s - report.seconds, budget_bytes - report.bytes)
    log.info("variant %s: CUDA graphs %s", settings.name, report.to_dict())


def _prefill_signatures(variant: Variant, budget_s: float, budget_bytes: int) -> None:
    """Capture the whole backbone for the artifact's most frequent masks (``frequent_masks``, recorded by
    ``blockdrop record-masks``) with what is left of the capture budgets, if they were drawn at the threshold the
    variant serves. A record that does not parse leaves them to be learnt while serving; a capture CUDA refuses
    turns signature graphs off (as a failed capture while serving does)."""
    try:
        masks = recorded_masks(variant.manifest, variant.threshold)
    except ValueError as error:
        log.warning("variant %s: frequent masks unreadable (%s); learnt while serving instead", variant.name, error)
        return
    if masks is None:
        log.info("variant %s: no frequent masks recorded at threshold %s; signature graphs are learnt while serving",
                 variant.name, variant.threshold)  # fmt: skip
        return
    if budget_s <= 0 or budget_bytes <= 0:
        log.warning("variant %s: no capture budget left for its frequent masks", variant.name)
        return
    try:
        variant.engine.prefill_signatures(masks, budget_s, budget_bytes)
    except RuntimeError:
        log.exception("variant %s: capturing its frequent masks failed; signature graphs are off", variant.name)
        variant.engine.signatures.clear()
        variant.engine.signature_graphs = 0

"""BlockDrop: a policy picks, per image, which residual blocks of a flat ResNet to run; the executor runs only those.

Stage semantics follow the original code: the stage's shortcut always runs; a kept block gives
``relu(shortcut + block(x))``; a dropped block passes the shortcut output on unchanged. The original batched
code computes every block for every image and multiplies by the mask, so it saves nothing. Here each block
runs only on the rows that keep it (gather, run, scatter back), with fast paths when all or none keep it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.flops import FlopsTable, measure_flops
from models.policy import PolicyNet
from models.resnet import FlatResNet


class Mode(StrEnum):
    POLICY = "policy"  # the policy decides (keep-probability >= threshold)
    FULL = "full"  # every block
    FIRST_K = "first_k"  # the paper's baseline: the first k blocks
    RANDOM_K = "random_k"  # the paper's baseline: k blocks chosen at random per image


@dataclass(frozen=True)
class InferenceResult:
    logits: Tensor  # [N, classes]
    keep_mask: Tensor  # [N, blocks], bool
    flops: Tensor  # [N], int64, the policy included when it ran


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def gather_rows(x: Tensor, rows: Tensor) -> Tensor:
    """``x.index_select(0, rows)`` in ``x``'s memory layout. A channels-last tensor is an NHWC-contiguous one seen
    through a permutation; selecting rows of that NHWC view copies once and keeps the layout, where
    ``index_select`` on the NCHW view would return NCHW rows that every convolution would convert back."""
    if _is_channels_last(x):
        return x.permute(0, 2, 3, 1).index_select(0, rows).permute(0, 3, 1, 2)
    return x.index_select(0, rows)


def scatter_rows_(into: Tensor, rows: Tensor, values: Tensor) -> Tensor:
    """``into.index_copy_(0, rows, values)``, through the NHWC views when both are channels-last."""
    if _is_channels_last(into) and _is_channels_last(values):
        into.permute(0, 2, 3, 1).index_copy_(0, rows, values.permute(0, 2, 3, 1))
        return into
    return into.index_copy_(0, rows, values)


def kept_rows(keep_mask: Tensor, device: torch.device) -> list[Tensor]:
    """For each block (column of ``keep_mask``), the indices of the rows that keep it, on ``device``.

    Worked out on the host for the whole batch at once: on a GPU a ``nonzero`` per block would stop the host until
    the GPU caught up (its output size depends on the data), once per block; this waits at most once, to bring a
    GPU-made mask over (a mask drawn on the CPU costs no wait at all), and sends every index in one copy.
    """
    rows = [column.nonzero().squeeze(1) for column in keep_mask.cpu().T]
    if device.type == "cpu":
        return rows
    flat = torch.cat(rows)
    if device.type == "cuda":
        flat = flat.pin_memory()  # a copy from pinned memory does not wait for the GPU's queue
    return list(flat.to(device, non_blocking=True).split([len(r) for r in rows]))


def run_block(block: nn.Module, x: Tensor, residual: Tensor, kept: Tensor) -> Tensor:
    """One block for a batch: rows listed in ``kept`` get relu(residual + block(x)), the others residual."""
    if kept.numel() == x.shape[0]:
        return F.relu(residual + block(x))
    if kept.numel() == 0:
        return residual
    inputs = gather_rows(x, kept)
    branch = block(inputs)
    # inside a stage the residual is the block's own input: its kept rows are already gathered
    kept_residual = inputs if residual is x else gather_rows(residual, kept)
    if torch.is_grad_enabled():  # training: autograd may still need these tensors, so nothing in place
        return residual.index_copy(0, kept, F.relu(kept_residual + branch))
    # inference: the branch and the residual are ours to overwrite, which saves two copies per block
    branch += kept_residual
    return scatter_rows_(residual, kept, F.relu_(branch))


def run_backbone(backbone: FlatResNet, x: Tensor, keep_mask: Tensor) -> Tensor:
    """Logits of ``backbone`` on ``x`` with each image running only the blocks its row of ``keep_mask`` keeps.

    ``keep_mask`` may live on the CPU while ``x`` is on a GPU (it is read on the host anyway, ``kept_rows``).
    """
    if keep_mask.shape != (x.shape[0], backbone.num_blocks):
        raise ValueError(f"keep_mask must be [{x.shape[0]}, {backbone.num_blocks}], got {list(keep_mask.shape)}")
    rows = kept_rows(keep_mask, x.device)
    x = backbone.stem(x)
    k = 0
    for shortcut, stage in zip(backbone.ds, backbone.blocks):
        for i, block in enumerate(stage):
            residual = shortcut(x) if i == 0 else x
            x = run_block(block, x, residual, rows[k])
            k += 1
    return backbone.head(x)


def run_backbone_masked(backbone: FlatResNet, x: Tensor, keep_mask: Tensor) -> Tensor:
    """The original code's batched method: every block runs on every image, outputs mixed by the mask.

    Same result as ``run_backbone``, none of its savings; kept as the reference for tests and benchmarks.
    """
    x = backbone.stem(x)
    k = 0
    for shortcut, stage in zip(backbone.ds, backbone.blocks):
        for i, block in enumerate(stage):
            residual = shortcut(x) if i == 0 else x
            mask = keep_mask[:, k].to(x.dtype).view(-1, 1, 1, 1)
            x = F.relu(residual + block(x)) * mask + residual * (1 - mask)
            k += 1
    return backbone.head(x)


def first_k_mask(n: int, num_blocks: int, k: int, device: torch.device | None = None) -> Tensor:
    mask = torch.zeros(n, num_blocks, dtype=torch.bool, device=device)
    mask[:, :k] = True
    return mask


def random_k_mask(n: int, num_blocks: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    scores = torch.rand(n, num_blocks, generator=generator)
    chosen = scores.topk(k, dim=1).indices
    return torch.zeros(n, num_blocks, dtype=torch.bool).scatter_(1, chosen, True)


class BlockDropModel(nn.Module):
    """Policy + backbone. Without a policy it is a plain ResNet whose mask is all ones.

    ``manifest`` is set by ``models.artifacts.load_artifact``.
    """

    def __init__(self, backbone: FlatResNet, policy: PolicyNet | None = None, input_size: tuple[int, int] = (32, 32)):
        super().__init__()
        self.backbone = backbone
        self.policy = policy
        self.input_size = input_size
        self.flops_table: FlopsTable = measure_flops(backbone, input_size, policy)
        self.manifest: Any = None

    @property
    def num_blocks(self) -> int:
        return self.backbone.num_blocks

    @property
    def stage_blocks(self) -> tuple[int, ...]:
        """Residual blocks per stage, in mask order."""
        return self.backbone.config.stage_blocks

    @property
    def backbone_dtype(self) -> torch.dtype:
        return self.backbone.fc.weight.dtype

    def default_mode(self) -> Mode:
        return Mode.POLICY if self.policy is not None else Mode.FULL

    def decide(
        self,
        x: Tensor,
        mode: Mode | str | None = None,
        threshold: float | Tensor = 0.5,
        k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The [N, blocks] bool keep mask that ``mode`` gives for ``x``; ``threshold`` may be one per row ([N]): the
        policy runs once and each row is compared with its own."""
        mode = Mode(mode) if mode is not None else self.default_mode()
        n = x.shape[0]
        if mode is Mode.POLICY:
            if self.policy is None:
                raise ValueError("this model has no policy; use mode 'full'")
            if isinstance(threshold, Tensor):
                threshold = threshold.to(x.device).view(-1, 1)
            return self.policy(x) >= threshold
        if mode is Mode.FULL:
            return torch.ones(n, self.num_blocks, dtype=torch.bool, device=x.device)
        if k is None or not 0 <= k <= self.num_blocks:
            raise ValueError(f"mode {mode.value} needs k in [0, {self.num_blocks}]")
        if mode is Mode.FIRST_K:
            return first_k_mask(n, self.num_blocks, k, x.device)
        return random_k_mask(n, self.num_blocks, k, generator).to(x.device)

    @torch.no_grad()
    def infer(
        self,
        x: Tensor,
        threshold: float | Tensor = 0.5,
        mode: Mode | str | None = None,
        k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> InferenceResult:
        """Logits (fp32), keep mask and FLOPs per image for a normalised batch ``x`` [N, 3, H, W]. The policy sees
        ``x`` as given; the backbone sees it in its own precision (``models.precision``)."""
        mode = Mode(mode) if mode is not None else self.default_mode()
        keep_mask = self.decide(x, mode, threshold, k, generator)
        logits = run_backbone(self.backbone, x.to(self.backbone_dtype), keep_mask).float()
        flops = self.flops_table.per_image(keep_mask, include_policy=mode is Mode.POLICY)
        return InferenceResult(logits=logits, keep_mask=keep_mask, flops=flops)

    def forward(self, x: Tensor) -> Tensor:
        return self.infer(x).logits

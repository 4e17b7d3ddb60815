"""The precision a model's backbone computes in: ``fp32``, ``bf16`` or ``fp16``.

Only the backbone changes precision; a BlockDrop policy stays in fp32, so the masks it draws do not move with the
precision (a keep-probability near the threshold would flip in bf16). ``auto`` is bf16 on a CUDA GPU that computes
it natively and fp32 everywhere else: on a CPU without bf16 units oneDNN emulates it, many times slower.
"""

from __future__ import annotations

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", *DTYPES)


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """``auto`` made concrete for ``device``; a name that is not a precision is refused plainly."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16"
    return "fp32"


def backbone_of(model: nn.Module) -> nn.Module:
    """The part that changes precision: a BlockDrop model's backbone (not its policy), else the whole model."""
    return getattr(model, "backbone", model)


def apply_precision(model: nn.Module, precision: str) -> torch.dtype:
    """Cast ``model``'s backbone to ``precision`` in place; returns its dtype. The policy, if any, stays fp32."""
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}")
    dtype = DTYPES[precision]
    backbone_of(model).to(dtype)
    policy = getattr(model, "policy", None)
    if policy is not None:
        policy.float()
    return dtype


def precision_of(model: nn.Module) -> str:
    """The name of the precision ``model``'s backbone computes in."""
    dtype = next(backbone_of(model).parameters()).dtype
    return next((name for name, d in DTYPES.items() if d == dtype), str(dtype))

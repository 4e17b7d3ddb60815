"""Where a model runs: one parser for ``--device`` and the service's ``device`` setting."""

from __future__ import annotations

import torch


def resolve_device(requested: str) -> torch.device:
    """``auto`` (the first GPU if torch sees one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; a device this
    machine does not have is refused with a plain ``ValueError`` rather than a CUDA error later."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise ValueError(f"device {requested!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r}: no CUDA GPU is visible to torch on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {requested!r}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    return device

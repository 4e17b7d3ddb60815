"""Resumable run folders: ``checkpoint.pt`` (written atomically each epoch) and ``log.jsonl``.

Checkpoints hold only tensors and plain values and are read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"


class RunFolder:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)  # made at the first save or log line: a run refused before it trains leaves none

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_NAME

    def save(self, state: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def load(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)

    def check_config(self, state: dict[str, Any], config: dict[str, Any]) -> None:
        """Refuse to resume a run with different settings: the result would match neither."""
        saved = state.get("config", {})
        changed = {k for k in config.keys() | saved.keys() if saved.get(k) != config.get(k)}
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in sorted(changed))
            raise ValueError(f"{self.path} holds a run with other settings ({details}); use a new --run-dir")

    def log(self, record: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOG_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")

    def history(self) -> list[dict[str, Any]]:
        path = self.path / LOG_NAME
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

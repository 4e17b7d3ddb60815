"""What every benchmark shares: where results go, how the machine is described, how results are written."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def machine_description() -> str:
    return f"{platform.machine()}, {_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (counts of runs, rounds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def paired_median_ratio(mine: Sequence[float], theirs: Sequence[float]) -> float:
    """The median of mine[i] / theirs[i] over runs that took turns (run i of one with run i of the other), which a
    drifting machine disturbs less than a ratio of medians."""
    return statistics.median(m / t for m, t in zip(mine, theirs))


def write_results(out: str | os.PathLike, name: str, result: dict, markdown: str) -> None:
    """``NAME.json`` and ``NAME.md`` in ``out``; the table is printed too."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / f"{name}.md").write_text(markdown)
    print(markdown)

"""What every benchmark shares: where results go, how the machine is described, how results are written."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def normalised_test_images(manifest: Any, data_root: str | None, count: int) -> torch.Tensor:
    """The first ``count`` CIFAR-10 test images normalised as the artifact's ``manifest`` says, or as many random
    ones (seeded) without ``data_root``: a model's input as the service would give it."""
    if not data_root:
        return torch.randn(count, 3, *manifest.input.size, generator=torch.Generator().manual_seed(0))
    from training.data import Normalizer, load_cifar

    return Normalizer(manifest.input.mean, manifest.input.std)(load_cifar(data_root, "test").images[:count])


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


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (a service and its inference workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def process_ended(pid: int) -> bool:
    """Whether ``pid`` has ended: gone, or a zombie its parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def parent_of(pid: int) -> int:
    """The pid of ``pid``'s parent (a forked worker's: the fork server)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def commit_of(checkout: str | os.PathLike) -> str | None:
    """The short commit a git checkout is at (None where it is not one)."""
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def worker_of(pid: int, variant: str) -> int:
    """The pid of ``variant``'s inference worker or model server below ``pid`` (named ``bd:VARIANT`` by the
    service)."""
    for member in process_tree(pid):
        try:
            if Path(f"/proc/{member}/comm").read_text().strip() == f"bd:{variant}"[:15]:
                return member
        except OSError:
            continue
    raise RuntimeError(f"no worker process for variant {variant} below {pid}")


def tree_memory_kib(pid: int) -> dict[str, int]:
    """Resident and proportional set sizes summed over the process tree of ``pid``, in KiB. RSS counts the pages
    the processes share (torch's libraries) once per process; PSS splits them, so it adds up to what they use."""
    totals = {"rss_kib": 0, "pss_kib": 0}
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Rss:", "Pss:")):
                    totals[f"{line[:3].lower()}_kib"] += int(line.split()[1])
        except OSError:
            continue
    return totals

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
from prometheus_client.parser import text_string_to_metric_families

from service.cluster import processes

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


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of ``name`` (labels, value) in the Prometheus text ``text`` a service's /metrics gave."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (a service and its inference workers)."""
    return [pid, *sorted(processes.descendants(pid))]


def commit_of(checkout: str | os.PathLike) -> str | None:
    """The short commit a git checkout is at (None where it is not one)."""
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def worker_of(pid: int, variant: str) -> int:
    """The pid of ``variant``'s inference worker or model server below ``pid`` (named ``bd:VARIANT`` by the
    service)."""
    for member in process_tree(pid):
        if (found := processes.status(member)) and found.name == f"bd:{variant}"[:15]:
            return member
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

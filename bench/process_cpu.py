"""CPU time of a running service, split by the kind of process that spent it: API servers (HTTP, decoding,
routing, answering; in a single-process service, that process), model workers (``bd:VARIANT``: the models and,
with several API servers, the micro-batching) and the supervisor (``--api-servers N`` only). Read from
/proc/PID/stat (user + system time) of every process under the service, before and after a load run."""

from __future__ import annotations

from bench.common import process_tree
from service.cluster import processes

KINDS = ("api_server", "model_worker", "supervisor")


def cpu_by_kind(root: int) -> dict[str, float]:
    """CPU seconds so far of every process under ``root`` (itself included), summed per kind of process."""
    stats = {pid: (found.name, found.cpu_seconds) for pid in process_tree(root) if (found := processes.status(pid))}
    several = any(name.startswith("bd-api") for name, _ in stats.values())
    totals = dict.fromkeys(KINDS, 0.0)
    for pid, (name, seconds) in stats.items():
        if name.startswith("bd:"):
            kind = "model_worker"
        elif name.startswith("bd-api") or (pid == root and not several):
            kind = "api_server"
        else:
            kind = "supervisor"  # with several API servers, the root; and multiprocessing's resource tracker
        totals[kind] += seconds
    return totals


def per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """Milliseconds of CPU per request of each kind between two readings."""
    return {kind: (after[kind] - before[kind]) * 1000 / max(requests, 1) for kind in KINDS}

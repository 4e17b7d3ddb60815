"""The load-adaptive threshold under overload: the shipped BlockDrop variant served with a fixed threshold and with
``adaptive`` settings, each through the same phases of offered load (by default 0.5x, 1.5x and 0.5x of the fixed
service's capacity), with labelled CIFAR-10 test images. Per phase: answers, answers within the latency SLO,
503s, p99 and the accuracy of the answers; for the adaptive service also the live threshold over time, and how
long it took to come back to the default after the overload.

Load comes from ``wrk`` with a pause between each connection's requests (``bench/wrk_paced.lua``): C connections
offer about ``C / pause`` requests a second while the service keeps up; past its capacity the answers slow down
(up to C requests wait at once) and the share within the SLO falls, which is what the phases measure. The fixed
service's capacity is measured first, closed-loop. Results go to ``bench/results/overload.{json,md}``:

    blockdrop bench overload --data-root DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import RESULTS, machine_description, metric_samples, write_results
from bench.efficiency import load_bodies
from bench.load import Process, free_port, run_wrk
from bench.variants import CHECKPOINTS

LUA = Path(__file__).resolve().parent / "wrk_paced.lua"


def labels_of(data_root: str | None, count: int) -> list[int]:
    from training.data import load_cifar

    return [int(label) for label in load_cifar(data_root, "test").labels[:count]]


def start(artifact: Path, adaptive: dict | None) -> Process:
    port = free_port()
    variant = {"name": "blockdrop", "artifact": str(artifact), "mode": "blockdrop"}
    if adaptive:
        variant["adaptive"] = adaptive
    env = {
        "BLOCKDROP_PORT": str(port),
        "BLOCKDROP_GRPC_PORT": "0",
        "BLOCKDROP_VARIANTS": json.dumps([variant]),
        "BLOCKDROP_QUEUE_LIMIT": "1024",  # the connections, not the queue, bound what waits
        "BLOCKDROP_LOG_LEVEL": "warning",
    }
    return Process([sys.executable, "-m", "cli.main", "serve"], env, port, "/healthz/ready")


def paced(
    url: str, connections: int, seconds: int, pause_ms: float, folder: Path, labels: list[int], slo_ms: float
) -> dict:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url]
    env = os.environ | {
        "WRK_BODY_DIR": str(folder),
        "WRK_BODY_COUNT": str(len(labels)),
        "WRK_DELAY_MS": f"{pause_ms:.3f}",
        "WRK_SLO_MS": str(slo_ms),
        "WRK_LABELS": ",".join(map(str, labels)),
    }
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    raw = json.loads(next(line for line in output.splitlines() if line.startswith("WRK_JSON ")).split(" ", 1)[1])
    statuses = {int(k): v for k, v in raw["statuses"].items()}
    refused = sum(n for status, n in statuses.items() if status != 200)
    # refusals are answered fast, so they sit in the low end of the latency distribution
    within = max(0, round(raw["requests"] * raw["within_slo_percent"] / 100) - refused)
    return {
        "answered": statuses.get(200, 0),
        "answered_within_slo": within,
        "refused": refused,
        "statuses": statuses,
        "p50_ms": raw["p50_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "accuracy": raw["right"] / raw["judged"] if raw["judged"] else None,
        "seconds": raw["duration_us"] / 1e6,
    }


class ThresholdWatch:
    """The live threshold gauge, read twice a second in the background."""

    def __init__(self, url: str):
        self.url, self.samples, self._stop = url, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                samples = metric_samples(httpx.get(self.url + "/metrics", timeout=2).text, "blockdrop_policy_threshold")
            except httpx.HTTPError:
                continue
            for labels, threshold in samples:
                if labels.get("variant") == "blockdrop":
                    self.samples.append((round(time.monotonic() - self.started, 2), threshold))

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def run(args: argparse.Namespace) -> dict:
    artifact = Path(args.artifact)
    factors = [float(f) for f in args.phases.split(",")]
    adaptive = {
        "slo_queue_wait_ms": args.queue_slo_ms,
        "max_threshold": args.max_threshold,
        "step": args.step,
        "period_s": args.period_s,
        "window_s": args.window_s,
    }
    result: dict = {
        "machine": machine_description(),
        "phases": factors,
        "slo_ms": args.slo_ms,
        "connections": args.connections,
        "adaptive_settings": adaptive,
    }
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        load_bodies(args.data_root, args.images, folder)
        labels = labels_of(args.data_root, args.images)
        for label, settings in (("fixed", None), ("adaptive", adaptive)):
            server = start(artifact, settings)
            try:
                if label == "fixed":  # capacity: the fixed threshold's closed-loop rate, on the same server
                    url = f"{server.url}/v1/classify"
                    run_wrk(url, 64, 2, folder, len(labels))  # warm-up
                    capacity = run_wrk(url, 64, args.capacity_seconds, folder, len(labels))["requests_per_second"]
                    result["capacity_rps"] = capacity
                result[label] = _phases(label, server, factors, capacity, args, folder, labels)
            finally:
                server.stop()
    result["summary"] = summary(result)
    return result


def _phases(label: str, server, factors: list[float], capacity: float, args, folder: Path, labels: list[int]) -> dict:
    """Paced load at each factor of ``capacity`` in turn, then an idle tail, watching the live threshold."""
    watch = ThresholdWatch(server.url)
    phases = []
    try:
        for factor in factors:
            pause_ms = 1000 * args.connections / (factor * capacity)
            started = round(time.monotonic() - watch.started, 2)
            sample = paced(
                f"{server.url}/v1/classify", args.connections, args.seconds, pause_ms, folder, labels, args.slo_ms
            )
            phases.append({"factor": factor, "started_s": started} | sample)
            print(label, json.dumps(phases[-1]), flush=True)
        time.sleep(args.tail_seconds)  # the threshold's way back, with no load
    finally:
        samples = watch.stop()
    return {"phases": phases, "threshold_series": samples}


def summary(result: dict) -> dict:
    """Per phase: adaptive over fixed in answers within the SLO, and the accuracy difference; the recovery time."""
    rows = []
    for fixed, adaptive in zip(result["fixed"]["phases"], result["adaptive"]["phases"]):
        ratio = adaptive["answered_within_slo"] / fixed["answered_within_slo"] if fixed["answered_within_slo"] else None
        accuracy_gap = None
        if fixed["accuracy"] is not None and adaptive["accuracy"] is not None:
            accuracy_gap = (adaptive["accuracy"] - fixed["accuracy"]) * 100
        rows.append({"factor": fixed["factor"], "within_slo_ratio": ratio, "accuracy_points": accuracy_gap})
    series = result["adaptive"]["threshold_series"]
    default = series[0][1] if series else None
    peak_index = max(range(len(result["phases"])), key=lambda i: result["phases"][i])
    after = (
        result["adaptive"]["phases"][peak_index + 1]["started_s"] if peak_index + 1 < len(result["phases"]) else None
    )
    back = next((t for t, value in series if after is not None and t >= after and value == default), None)
    return {
        "rows": rows,
        "default_threshold": default,
        "max_threshold_seen": max((v for _, v in series), default=None),
        "seconds_back_to_default": None if back is None or after is None else round(back - after, 1),
    }


def to_markdown(result: dict) -> str:
    lines = [
        f"The shipped BlockDrop ResNet-32, fixed threshold against `adaptive` {result['adaptive_settings']}; offered "
        f"load in phases of the fixed service's closed-loop capacity ({result['capacity_rps']:.0f} req/s), "
        f"{result['connections']} wrk "
        f"connections pacing their requests; SLO {result['slo_ms']:g} ms end to end; labelled CIFAR-10 test images; "
        f"{result['machine']}.",
        "",
        "| phase | service | answered | within SLO | 503 | p50 | p99 | accuracy of answers |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, factor in enumerate(result["phases"]):
        for label in ("fixed", "adaptive"):
            r = result[label]["phases"][i]
            accuracy = f"{r['accuracy'] * 100:.2f} %" if r["accuracy"] is not None else ""
            lines.append(
                f"| {factor:g}x | {label} | {r['answered']} | {r['answered_within_slo']} | {r['refused']} | "
                f"{r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {accuracy} |"
            )
    s = result["summary"]
    lines += ["", "Adaptive against fixed, per phase:", ""]
    for i, row in enumerate(s["rows"]):
        fixed, adaptive = (result[label]["phases"][i]["answered_within_slo"] for label in ("fixed", "adaptive"))
        ratio = f" ({row['within_slo_ratio']:.2f}x)" if row["within_slo_ratio"] is not None else ""
        gap = f"{row['accuracy_points']:+.2f} points" if row["accuracy_points"] is not None else "–"
        lines.append(f"- {row['factor']:g}x: answers within the SLO {adaptive} against {fixed}{ratio}, accuracy {gap}")
    lines += [
        "",
        f"Live threshold: default {s['default_threshold']}, highest seen {s['max_threshold_seen']}; back to the "
        f"default {s['seconds_back_to_default']} s after the overload phase ended.",
    ]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help="folder holding cifar-10-batches-py (default: $BLOCKDROP_DATA_ROOT)")
    parser.add_argument(
        "--artifact", default=str(CHECKPOINTS / "cifar10-resnet32-blockdrop"), help="the BlockDrop artifact served"
    )
    parser.add_argument("--images", type=int, default=1000, help="labelled test images posted in turn")
    parser.add_argument("--connections", type=int, default=256, help="wrk connections (the most requests at once)")
    parser.add_argument("--phases", default="0.5,1.5,0.5", help="offered load per phase, x the fixed capacity")
    parser.add_argument("--seconds", type=int, default=20, help="length of each phase")
    parser.add_argument("--capacity-seconds", type=int, default=5, help="closed-loop run that measures capacity")
    parser.add_argument("--tail-seconds", type=float, default=5, help="idle time watched after the last phase")
    parser.add_argument("--slo-ms", type=float, default=50, help="end-to-end latency SLO of an answer")
    parser.add_argument("--queue-slo-ms", type=float, default=20, help="the controller's queue-wait p95 SLO")
    parser.add_argument("--max-threshold", type=float, default=0.6, help="the controller's floor")
    parser.add_argument("--step", type=float, default=0.025, help="the controller's step")
    parser.add_argument("--period-s", type=float, default=1.0, help="the controller's period")
    parser.add_argument("--window-s", type=float, default=3.0, help="the controller's window")
    parser.add_argument("--out", default=str(RESULTS), help="folder for overload.json and overload.md")


def execute(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise ValueError("wrk is not installed (Debian: apt-get install wrk)")
    result = run(args)
    write_results(args.out, "overload", result, to_markdown(result))
    return 0

"""Start-up and recovery: seconds until a service answers ready, its memory, and until a killed worker is replaced.

Each run starts ``blockdrop serve`` on the shipped checkpoints (the default variants, or ``--variant``), times it
until ``/healthz/ready`` answers 200, reads the memory of its processes (PSS, which splits shared pages among
them), with ``--load-seconds`` serves the victim at c=32 with wrk (every run is a fresh set of processes, whose
speed varies from one start to the next), SIGKILLs the ``--victim`` variant's worker and times until a request
pinned to that variant is answered 200 again. With ``--baseline-checkout DIR`` the same runs of another checkout
(an older commit) take turns with these, and the JSON and table give their paired ratios.

    blockdrop bench startup --repeats 5 --baseline-checkout ../old
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import (
    RESULTS,
    commit_of,
    machine_description,
    paired_median_ratio,
    tree_memory_kib,
    worker_of,
    write_results,
)
from bench.hostile_inputs import png
from bench.load import ROOT, Process, free_port, run_wrk
from bench.variants import add_variant_option, parse_variants
from service.cluster import processes
from service.config import VariantSettings

READY_PATH = "/healthz/ready"


def start(checkout: Path, api_servers: int, variants: dict[str, VariantSettings]) -> tuple[Process, float]:
    """``blockdrop serve`` from ``checkout`` (its default variants unless ``variants``), and the seconds until it
    answered ready."""
    port = free_port()
    env = {"BLOCKDROP_PORT": str(port), "BLOCKDROP_GRPC_PORT": "0", "BLOCKDROP_API_SERVERS": str(api_servers)}
    env |= {"PYTHONPATH": str(checkout)}
    if variants:
        served = [variant.model_dump(mode="json", exclude_defaults=True) for variant in variants.values()]
        env["BLOCKDROP_VARIANTS"] = json.dumps(served)
    started = time.monotonic()
    command = [sys.executable, "-m", "cli.main", "serve", "--log-level", "warning"]
    server = Process(command, env, port, READY_PATH, checkout)
    return server, time.monotonic() - started


def replace_seconds(server: Process, variant: str, image: bytes, timeout_s: float = 120) -> float:
    """SIGKILL ``variant``'s worker; the seconds until a request pinned to it is answered 200 again."""
    victim = worker_of(server.process.pid, variant)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    while processes.alive(victim):
        time.sleep(0.01)
    url = f"{server.url}/v1/classify?variant={variant}"
    with httpx.Client(timeout=30) as client:
        while time.monotonic() - killed < timeout_s:
            if client.post(url, content=image, headers={"content-type": "image/png"}).status_code == 200:
                return time.monotonic() - killed
            time.sleep(0.02)
    raise RuntimeError(f"the worker of {variant} was not replaced in {timeout_s:g} s")


def run(args: argparse.Namespace) -> dict:
    checkouts = {"this": ROOT}
    if args.baseline_checkout:
        checkouts["baseline"] = Path(args.baseline_checkout).resolve()
    runs = {name: {"ready_s": [], "pss_mib": [], "replaced_s": []} for name in checkouts}
    if args.load_seconds:
        for row in runs.values():
            row["served_rps"] = []
    image = png((32, 32), "RGB")
    variants = parse_variants(args.variant) if args.variant else {}
    with tempfile.TemporaryDirectory() as bodies:
        (Path(bodies) / "image_0.png").write_bytes(image)
        for _ in range(args.repeats):
            for name, checkout in checkouts.items():  # in turns: a drifting machine affects both alike
                server, ready = start(checkout, args.api_servers, variants)
                try:
                    time.sleep(args.settle_seconds)  # nothing else starting: the kill is timed on a quiet service
                    runs[name]["pss_mib"].append(round(tree_memory_kib(server.process.pid)["pss_kib"] / 1024))
                    if args.load_seconds:  # each run a fresh set of processes: their speed varies from one to the next
                        url = f"{server.url}/v1/classify?variant={args.victim}"
                        rps = run_wrk(url, 32, args.load_seconds, Path(bodies), 1)["requests_per_second"]
                        runs[name]["served_rps"].append(round(rps, 1))
                    replaced = replace_seconds(server, args.victim, image)
                finally:
                    server.stop()
                runs[name]["ready_s"].append(round(ready, 3))
                runs[name]["replaced_s"].append(round(replaced, 3))
                print(f"{name}: " + ", ".join(f"{k} {v[-1]}" for k, v in runs[name].items()), flush=True)
    result = {
        "machine": machine_description(),
        "api_servers": args.api_servers,
        "victim": args.victim,
        "variants": {name: str(v.artifact) for name, v in (variants or parse_variants([])).items()},
        "repeats": args.repeats,
        "commits": {name: commit_of(checkout) for name, checkout in checkouts.items()},
        "runs": runs,
        "median": {name: {k: statistics.median(v) for k, v in row.items()} for name, row in runs.items()},
    }
    if "baseline" in runs:
        result["baseline_over_this"] = {
            key: round(paired_median_ratio(runs["baseline"][key], runs["this"][key]), 2) for key in runs["this"]
        }  # for served_rps, below 1 means this serves more
    return result


def to_markdown(result: dict) -> str:
    victim = result["victim"]
    served = all("served_rps" in row for row in result["median"].values())
    lines = [
        "# Start-up and recovery",
        "",
        f"{result['machine']}; variants {', '.join(result['variants'])}, {result['api_servers']} API server(s); "
        f"median of {result['repeats']} runs each, taken in turns.",
        "",
        f"| checkout | commit | ready after start | memory (PSS) | `{victim}`'s worker killed → answered again |"
        + (f" `{victim}` req/s at c=32 |" if served else ""),
        "|---|---|---:|---:|---:|" + ("---:|" if served else ""),
    ]
    for name, row in result["median"].items():
        lines.append(
            f"| {name} | {result['commits'][name]} | {row['ready_s']:.2f} s | {row['pss_mib']:.0f} MiB | "
            f"{row['replaced_s']:.2f} s |" + (f" {row['served_rps']:.0f} |" if served else "")
        )
    if "baseline_over_this" in result:
        ratio = result["baseline_over_this"]
        lines += [
            "",
            f"Baseline over this (paired): start-up {ratio['ready_s']}x, memory {ratio['pss_mib']}x, worker "
            f"replacement {ratio['replaced_s']}x"
            + (f", served req/s {ratio['served_rps']}x (below 1: this serves more)." if served else "."),
        ]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=3, help="runs per checkout")
    parser.add_argument("--api-servers", type=int, default=1, help="the service's API servers (1: worker processes)")
    add_variant_option(parser, "serve this artifact (repeatable); default: the default variants")
    parser.add_argument("--victim", default="full", help="the variant whose worker is killed")
    parser.add_argument("--settle-seconds", type=float, default=1.0, help="wait after ready before the kill")
    parser.add_argument("--baseline-checkout", metavar="DIR", help="another checkout, timed in turns with this one")
    parser.add_argument(
        "--load-seconds", type=int, default=0, help="wrk at c=32 on the victim variant before the kill (0: none)"
    )
    parser.add_argument("--out", default=str(RESULTS), help="folder for startup.json and startup.md")


def execute(args: argparse.Namespace) -> int:
    result = run(args)
    write_results(args.out, "startup", result, to_markdown(result))
    return 0

"""Load test against the running service with wrk: requests per second, p50 / p95 / p99 latency and errors per
variant at several concurrencies, micro-batching on and off, and the baseline a user would otherwise write
(the full ResNet behind a minimal FastAPI handler, no batching). Also the service's own HTTP overhead at
concurrency 1 (client-observed latency minus the model's inference time).

Needs ``wrk`` (Debian package). Results go to ``bench/results/load.{json,md}``:

    blockdrop bench load --data-root DIR
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

from bench.common import RESULTS, machine_description, paired_median_ratio, positive_int, write_results
from bench.process_cpu import cpu_by_kind, per_request
from bench.variants import add_variant_option, parse_variants
from service.config import VariantSettings
from service.libc import signal_when_parent_ends

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "wrk_post.lua"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A server subprocess on a free loopback port, ready when ``ready_path`` answers 200. A service stops at once
    on SIGTERM: the pre-stop period (``PRESTOP_S``, for a load balancer to notice) only delays a benchmark."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, ready_path: str, cwd: Path = ROOT):
        self.url = f"http://127.0.0.1:{port}"
        # state of its own (rollouts, whose outcome a start restores), never the user's
        self._state = tempfile.TemporaryDirectory(prefix="blockdrop-bench-state-")
        env = os.environ | {"BLOCKDROP_PRESTOP_S": "0", "BLOCKDROP_STATE_DIR": self._state.name} | env
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=signal_when_parent_ends(),  # a benchmark killed midway leaves no server running
        )
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=1) as client:  # one client: each new one loads the system's CA bundle (~25 ms)
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + ready_path).status_code == 200:
                        return
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{command} did not become ready")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._state.cleanup()


def service(variants: dict[str, VariantSettings], **settings: object) -> Process:
    """``blockdrop serve`` on a free port with these variants; ``settings`` become ``BLOCKDROP_*`` variables."""
    port = free_port()
    served = [variant.model_dump(mode="json", exclude_defaults=True) for variant in variants.values()]
    env = {"BLOCKDROP_PORT": str(port), "BLOCKDROP_VARIANTS": json.dumps(served), "BLOCKDROP_GRPC_PORT": "0"}
    env |= {f"BLOCKDROP_{key.upper()}": str(value) for key, value in settings.items()}
    return Process([sys.executable, "-m", "cli.main", "serve", "--log-level", "warning"], env, port, "/healthz/ready")


def baseline(full: str) -> Process:
    port = free_port()
    command = [sys.executable, "-m", "bench.baseline_server", full, "--port", str(port)]
    return Process(command, {}, port, "/docs")


def write_bodies(data_root: str | None, count: int, folder: Path) -> list[bytes]:
    from training.data import load_cifar

    test = load_cifar(data_root, "test")
    bodies = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
        (folder / f"image_{i}.png").write_bytes(bodies[-1])
    return bodies


def run_wrk(
    url: str,
    concurrency: int,
    seconds: float,
    bodies: Path,
    count: int,
    extra_env: dict[str, str] | None = None,
    server_pid: int | None = None,
) -> dict:
    """One wrk run; with ``server_pid``, also the CPU the service's processes spent per request, by kind."""
    threads = min(2, concurrency)
    command = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url]
    env = os.environ | {"WRK_BODY_DIR": str(bodies), "WRK_BODY_COUNT": str(count)} | (extra_env or {})
    before = cpu_by_kind(server_pid) if server_pid else None
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    after = cpu_by_kind(server_pid) if server_pid else None
    line = next(line for line in output.splitlines() if line.startswith("WRK_JSON "))
    raw = json.loads(line.removeprefix("WRK_JSON "))
    statuses = {int(k): v for k, v in raw["statuses"].items()}
    cpu = {"cpu_ms_per_request": per_request(before, after, raw["requests"])} if before and after else {}
    return cpu | {
        "concurrency": concurrency,
        "requests_per_second": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1e3,
        "p95_ms": raw["p95_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "statuses": statuses,
        "errors_5xx": sum(n for status, n in statuses.items() if status >= 500),
        "socket_errors": raw["socket_errors"] + raw["timeouts"],
    }


def http_overhead(url: str, bodies: list[bytes], requests: int) -> dict:
    """Sequential requests: client-observed latency minus the model's inference time, per request; also the
    same minus the service's own end-to-end figure, and the round trip of an empty GET with the same client."""
    overheads, in_handler, inference, empty = [], [], [], []
    with httpx.Client() as client:
        for i in range(requests):
            started = time.perf_counter()
            response = client.post(url, content=bodies[i % len(bodies)], headers={"content-type": "image/png"})
            elapsed_ms = (time.perf_counter() - started) * 1e3
            latency = response.json()["latency_ms"]
            overheads.append(elapsed_ms - latency["inference"])
            in_handler.append(latency["total"] - latency["inference"])
            inference.append(latency["inference"])
            started = time.perf_counter()
            client.get(url.split("/v1/")[0] + "/healthz/live")
            empty.append((time.perf_counter() - started) * 1e3)
    return {
        "requests": requests,
        "overhead_p50_ms": statistics.median(overheads),
        "in_handler_overhead_p50_ms": statistics.median(in_handler),
        "empty_get_p50_ms": statistics.median(empty),
        "inference_p50_ms": statistics.median(inference),
    }


def run(args: argparse.Namespace) -> dict:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    variants = parse_variants(args.variant)
    if "full" not in variants and not args.baseline:
        raise ValueError("the baseline needs a variant named 'full' or --baseline ARTIFACT")
    baseline_artifact = args.baseline or str(variants["full"].artifact)
    names = tuple(variants)
    api_servers = {"api_servers": args.api_servers} if args.api_servers else {}
    results: dict = {
        "api_servers": args.api_servers,
        "machine": machine_description(),
        "seconds_per_run": args.seconds,
        "repeats": args.repeats,
        "images": args.images,
        "overhead_requests": args.overhead_requests,
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        bodies = write_bodies(args.data_root, args.images, Path(folder))
        for label, start, paths in (
            (
                "service, micro-batching on",
                lambda: service(variants, max_batch_size=args.max_batch_size, queue_limit=512, **api_servers),
                names,
            ),
            (
                "service, micro-batching off",
                lambda: service(variants, max_batch_size=1, queue_limit=512, **api_servers),
                names,
            ),
            ("baseline: minimal FastAPI, full ResNet, no batching", lambda: baseline(baseline_artifact), (None,)),
        ):
            server = start()
            pid = server.process.pid if label.startswith("service") else None
            try:
                if label.endswith("on"):
                    results["overhead"] = {
                        v: http_overhead(f"{server.url}/v1/classify?variant={v}", bodies, args.overhead_requests)
                        for v in names
                    }
                urls = {
                    variant or "full": f"{server.url}/v1/classify?variant={variant}"
                    if variant
                    else f"{server.url}/classify"
                    for variant in paths
                }
                if args.warmup_seconds:
                    for url in urls.values():
                        run_wrk(url, 8, args.warmup_seconds, Path(folder), args.images)
                for concurrency in concurrencies:
                    # the variants take turns, run by run, so that a drift of the machine's speed hits them alike
                    runs: dict[str, list[dict]] = {variant: [] for variant in urls}
                    for _ in range(args.repeats):
                        for variant, url in urls.items():
                            run = run_wrk(url, concurrency, args.seconds, Path(folder), args.images, None, pid)
                            runs[variant].append(run)
                    for variant, samples in runs.items():
                        results["runs"].append({"setup": label, "variant": variant} | summarise(samples))
                        print(json.dumps(results["runs"][-1]), flush=True)
            finally:
                server.stop()
    results["speedups"] = paired_speedups(results["runs"], "service, micro-batching on")
    return results


PERCENTILES = ("p50_ms", "p95_ms", "p99_ms")


def summarise(samples: list[dict]) -> dict:
    """Repeated wrk runs of one row: the medians of the rates and percentiles, the sums of the errors."""
    median = {key: statistics.median(s[key] for s in samples) for key in ("requests_per_second", *PERCENTILES)}
    statuses: dict[int, int] = {}
    for sample in samples:
        for status, count in sample["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    cpu = {}
    if all("cpu_ms_per_request" in s for s in samples):
        kinds = samples[0]["cpu_ms_per_request"]
        cpu = {"cpu_ms_per_request": {k: statistics.median(s["cpu_ms_per_request"][k] for s in samples) for k in kinds}}
    return cpu | {
        "concurrency": samples[0]["concurrency"],
        **median,
        "repeats": len(samples),
        "requests_per_second_each": [s["requests_per_second"] for s in samples],
        "statuses": statuses,
        "errors_5xx": sum(s["errors_5xx"] for s in samples),
        "socket_errors": sum(s["socket_errors"] for s in samples),
    }


def paired_speedups(rows: list[dict], setup: str) -> dict[str, dict[str, float]]:
    """Each variant's requests/s over the full variant's, per concurrency, as the median of paired ratios."""
    rates = {(r["variant"], r["concurrency"]): r["requests_per_second_each"] for r in rows if r["setup"] == setup}
    speedups: dict[str, dict[str, float]] = {}
    for (variant, concurrency), each in rates.items():
        full = rates.get(("full", concurrency))
        if variant == "full" or not full:
            continue
        speedups.setdefault(variant, {})[str(concurrency)] = paired_median_ratio(each, full)
    return speedups


def to_markdown(result: dict) -> str:
    repeats, seconds = result.get("repeats", 1), result["seconds_per_run"]
    per_row = f"{seconds} s per row"
    if repeats > 1:
        per_row = f"each row the median of {repeats} runs of {seconds} s, the variants taking turns"
    lines = [
        f"wrk against the service on loopback, {per_row}; {result['machine']}. "
        f"Each request posts one of {result['images']} CIFAR-10 test images (PNG) in turn.",
        "",
        f"API servers: {result.get('api_servers') or 'the default for this machine'}. CPU per request: the CPU "
        "time the service's processes of each kind spent during the run over the requests answered (API servers: "
        "HTTP, decoding, routing, answering; model workers: the models, and with several API servers the "
        "batching); the baseline's is not measured.",
        "",
        "| setup | variant | concurrency | requests/s | p50 | p95 | p99 | 5xx | socket errors | CPU ms/request: API "
        "servers | model workers |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        cpu = r.get("cpu_ms_per_request")
        lines.append(
            f"| {r['setup']} | {r['variant']} | {r['concurrency']} | {r['requests_per_second']:.0f} | "
            f"{r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['errors_5xx']} | "
            f"{r['socket_errors']} | " + (f"{cpu['api_server']:.2f} | {cpu['model_worker']:.2f} |" if cpu else " | |")
        )
    if result.get("speedups"):
        concurrencies = sorted({int(c) for ratios in result["speedups"].values() for c in ratios})
        lines += [
            "",
            "Requests/s against the `full` variant (micro-batching on; the median of the ratios of runs taken in "
            "turn):",
            "",
            "| variant | " + " | ".join(f"c={c}" for c in concurrencies) + " |",
            "|---|" + "---:|" * len(concurrencies),
        ]
        for variant, ratios in result["speedups"].items():
            cells = " | ".join(f"{ratios[str(c)]:.2f}x" if str(c) in ratios else "" for c in concurrencies)
            lines.append(f"| {variant} | {cells} |")
    lines += [
        "",
        "HTTP overhead at concurrency 1 (client-observed latency minus the model's inference time, median "
        f"of {result.get('overhead_requests', 300)} sequential requests):",
        "",
    ]
    single = {
        r["variant"]: r["p50_ms"]
        for r in result["runs"]
        if r["setup"] == "service, micro-batching on" and r["concurrency"] == 1
    }
    for variant, o in result.get("overhead", {}).items():
        line = (
            f"- {variant}: {o['overhead_p50_ms']:.2f} ms overhead ({o['in_handler_overhead_p50_ms']:.2f} ms of it "
            f"between the handler's start and its answer; an empty GET takes {o['empty_get_p50_ms']:.2f} ms with "
            f"the same client), {o['inference_p50_ms']:.2f} ms inference"
        )
        if variant in single:
            line += f"; seen by wrk at concurrency 1: {single[variant] - o['inference_p50_ms']:.2f} ms over inference"
        lines.append(line)
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help="folder holding cifar-10-batches-py (default: $BLOCKDROP_DATA_ROOT)")
    parser.add_argument("--concurrency", default="1,8,32,64", help="comma-separated wrk connection counts")
    parser.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    parser.add_argument(
        "--repeats", type=positive_int, default=1, help="wrk runs per row, the variants taking turns; rows give medians"
    )
    parser.add_argument("--images", type=int, default=256, help="distinct test images posted in turn")
    parser.add_argument("--max-batch-size", type=int, default=32, help="the service's batch size when batching")
    add_variant_option(parser, "serve and load this artifact (repeatable); default: the default variants")
    parser.add_argument("--baseline", help="artifact behind the minimal FastAPI baseline (default: variant 'full')")
    parser.add_argument(
        "--api-servers", type=positive_int, help="API server processes the service runs (default: its own default)"
    )
    parser.add_argument("--warmup-seconds", type=int, default=2, help="untimed wrk run before each row")
    parser.add_argument(
        "--overhead-requests", type=int, default=300, help="sequential requests for the HTTP-overhead figures"
    )
    parser.add_argument("--out", default=str(RESULTS), help="folder for load.json and load.md")


def execute(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise ValueError("wrk is not installed (Debian: apt-get install wrk)")
    result = run(args)
    write_results(args.out, "load", result, to_markdown(result))
    return 0

"""Ray Serve against the single-process service: requests/s and latency through Ray's proxy, ingress and variant
deployment, and through one ``blockdrop serve`` process, on the same machine, taking turns run by run.

Both services run the same variant (the shipped BlockDrop ResNet-32 by default) on the sample images that ship
with the package, both start before the first run and stay up until the last, so an idle one's background work
(Ray's GCS, raylet and controller) weighs on the other's runs alike. Ray's setup: one ingress replica and one
variant replica (no autoscaling), so the difference is the cost of the path, not of more replicas.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import RESULTS, machine_description, paired_median_ratio, positive_int, write_results
from bench.load import Process, free_port, run_wrk
from service.cluster import processes
from service.config import CHECKPOINTS, Settings

SAMPLES = Path(__file__).resolve().parent.parent / "service" / "samples"
RAY = "Ray Serve"
NO_HAPROXY = "Ray Serve, straight to the ingress replica"  # --hops: the path without HAProxy


def ingress_url(server: Process) -> str:
    """The ingress replica's own HTTP port (what HAProxy forwards to), to measure the Ray path without HAProxy."""
    for pid in processes.descendants(server.process.pid):
        words = processes.command_line(pid)
        if words and words[0].startswith("ray::ServeReplica:") and ":ingress" in words[0]:
            for listener in processes.listeners({pid}):
                if listener.host == "127.0.0.1":
                    return f"http://127.0.0.1:{listener.port}"
    raise RuntimeError("no ingress replica listening on 127.0.0.1 below the Ray service")


def start(ray: bool, artifact: str, mode: str) -> Process:
    port = free_port()
    scaling = {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.5}
    variant = {"name": "served", "artifact": artifact, "mode": mode, "ray": scaling}
    env = {
        "BLOCKDROP_PORT": str(port),
        "BLOCKDROP_GRPC_PORT": "0",
        "BLOCKDROP_VARIANTS": json.dumps([variant]),
        "BLOCKDROP_QUEUE_LIMIT": "1024",
        "BLOCKDROP_LOG_FORMAT": "text",
    }
    command = [sys.executable, "-m", "cli.main", "serve", "--log-level", "warning", *(["--ray"] if ray else [])]
    return Process(command, env, port, "/healthz/ready")


def run(args: argparse.Namespace) -> dict:
    if shutil.which("wrk") is None:
        raise ValueError("this benchmark drives the services with wrk (Debian package 'wrk')")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        images = sorted(SAMPLES.glob("*.png"))
        for i, image in enumerate(images):
            (Path(folder) / f"image_{i}.png").write_bytes(image.read_bytes())
        servers = {"single process": start(False, args.artifact, args.mode)}
        try:
            servers[RAY] = start(True, args.artifact, args.mode)
            urls = {name: f"{server.url}/v1/classify" for name, server in servers.items()}
            if args.hops:
                urls[NO_HAPROXY] = f"{ingress_url(servers[RAY])}/v1/classify"
            for url in urls.values():
                run_wrk(url, 8, args.warmup_seconds, Path(folder), len(images))
            rows = []
            for concurrency in concurrencies:
                samples: dict[str, list[dict]] = {name: [] for name in urls}
                for _ in range(args.repeats):
                    for name, url in urls.items():
                        samples[name].append(run_wrk(url, concurrency, args.seconds, Path(folder), len(images)))
                for name, runs in samples.items():
                    rows.append(summarise(name, concurrency, runs))
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            for server in servers.values():
                server.stop()
    return {
        "machine": machine_description(),
        "artifact": Path(args.artifact).name,
        # the serve processes read the same environment, so the settings here say which proxy Ray ran
        "ray_proxy": "HAProxy" if Settings().ray.haproxy else "Ray's Python proxy",
        "seconds_per_run": args.seconds,
        "repeats": args.repeats,
        "rows": rows,
        "ray_over_single": ratios(rows),
        **({"no_haproxy_over_single": ratios(rows, NO_HAPROXY)} if args.hops else {}),
    }


def summarise(setup: str, concurrency: int, runs: list[dict]) -> dict:
    return {
        "setup": setup,
        "concurrency": concurrency,
        "requests_per_second": statistics.median(r["requests_per_second"] for r in runs),
        "requests_per_second_each": [r["requests_per_second"] for r in runs],
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "p99_ms_each": [r["p99_ms"] for r in runs],
        "non_2xx": sum(n for r in runs for status, n in r["statuses"].items() if status >= 300),
        "socket_errors": sum(r["socket_errors"] for r in runs),
    }


def ratios(rows: list[dict], chosen: str = RAY) -> dict[str, dict[str, float]]:
    """``chosen``'s figure over the single process's, per concurrency, as the median of the runs' paired ratios."""
    by = {(r["setup"], r["concurrency"]): r for r in rows}
    out = {}
    for (setup, concurrency), ray in by.items():
        if setup != chosen:
            continue
        single = by[("single process", concurrency)]
        out[str(concurrency)] = {
            "requests_per_second": paired_median_ratio(
                ray["requests_per_second_each"], single["requests_per_second_each"]
            ),
            "p99": paired_median_ratio(ray["p99_ms_each"], single["p99_ms_each"]),
        }
    return out


def to_markdown(result: dict) -> str:
    lines = [
        "# Ray Serve against one process",
        "",
        f"{result['machine']}; `{result['artifact']}`, the ten sample images; each row the median of "
        f"{result['repeats']} wrk runs of {result['seconds_per_run']} s, the two services taking turns; "
        f"Ray Serve behind {result.get('ray_proxy', 'HAProxy')} (setting `ray.haproxy`).",
        "",
        "| setup | connections | requests/s | p50 ms | p99 ms | non-2xx | socket errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['setup']} | {r['concurrency']} | {r['requests_per_second']:.0f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['non_2xx']} | {r['socket_errors']} |"
        )
    lines += [
        "",
        "| connections | Ray's requests/s over one process's | Ray's p99 over one process's |",
        "|---|---|---|",
    ]
    for concurrency, ratio in result["ray_over_single"].items():
        lines.append(f"| {concurrency} | {ratio['requests_per_second']:.2f}x | {ratio['p99']:.2f}x |")
    if "no_haproxy_over_single" in result:
        lines += ["", f"{NO_HAPROXY} (HAProxy left out), over one process:", ""]
        lines += ["| connections | requests/s | p99 |", "|---|---|---|"]
        for concurrency, ratio in result["no_haproxy_over_single"].items():
            lines.append(f"| {concurrency} | {ratio['requests_per_second']:.2f}x | {ratio['p99']:.2f}x |")
    command = result.get("command", "blockdrop bench ray")
    lines += ["", f"Reproduce: `{command}` (needs the extra `.[ray]` and wrk).", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact", default=str(CHECKPOINTS / "cifar10-resnet32-blockdrop"))
    parser.add_argument("--mode", choices=["blockdrop", "full"], default="blockdrop")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated wrk connection counts")
    parser.add_argument("--seconds", type=positive_int, default=10)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--warmup-seconds", type=positive_int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--hops", action="store_true", help="also straight to Ray's ingress replica, HAProxy left out (hop by hop)"
    )


def execute(args: argparse.Namespace) -> int:
    result = run(args)
    result["command"] = getattr(args, "command_line", "blockdrop bench ray")
    write_results(args.out, "ray", result, to_markdown(result))
    return 0

"""Soak run: minutes of mixed load against the service, with overload bursts and bad inputs mixed in.

Phases of steady load (wrk, moderate concurrency) alternate with bursts far past the queue limit, while a
second client keeps sending bad, awkward and hostile inputs (``bench/hostile_inputs.py``: deep JSON nesting, huge
integers, huge and unfinished headers, JSON tensors far larger than their shape, decompression-bomb PNGs). Every
request must get a response; the only 5xx allowed is a deliberate 503; the server's resident memory is sampled
throughout and reported before / after.

    blockdrop bench soak --data-root DIR --minutes 5
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.common import RESULTS, machine_description, tree_memory_kib, write_results
from bench.hostile_inputs import HALF_HEADER, Hostile, hostile_requests, huge_header, send_raw, status_of
from bench.load import run_wrk, service, write_bodies
from bench.variants import add_variant_option, parse_variants

BAD_INPUTS = [
    Hostile(name, "POST", "/v1/classify", body, {"content-type": content_type}, (400, 413, 415, 422))
    for name, body, content_type in [
        ("empty", b"", "image/png"),
        ("not an image", b"definitely not an image", "image/png"),
        ("truncated PNG", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png"),
        ("empty JSON", b"{}", "application/json"),
        ("bad base64", b'{"images": ["%%%"]}', "application/json"),
        ("text", b"hello", "text/plain"),
    ]
]
ADMIN_TOKEN = "bench-soak"  # so that the hostile admin change reaches the route's validation
# connection-level abuse, one of these every this many bad requests (each holds the client for a while)
RAW_EVERY = 50


def resident_kib(pid: int) -> int:
    """The service's memory: the proportional set size of its process and its inference workers."""
    return tree_memory_kib(pid)["pss_kib"]


def bad_input_client(url: str, stop: threading.Event, statuses: Counter) -> None:
    bad = BAD_INPUTS + hostile_requests(ADMIN_TOKEN)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    raw = [huge_header(1 << 20), HALF_HEADER]
    with httpx.Client(timeout=30) as client:
        i = 0
        while not stop.is_set():
            if i % RAW_EVERY == RAW_EVERY - 1:
                status = status_of(send_raw(port, raw[(i // RAW_EVERY) % len(raw)], 30))
                statuses[status if status is not None else "no response"] += 1
            else:
                request = bad[i % len(bad)]
                try:
                    answer = client.request(
                        request.method, url + request.path, content=request.body, headers=request.headers
                    )
                    statuses[answer.status_code] += 1
                except httpx.HTTPError:
                    statuses["no response"] += 1
            i += 1
            time.sleep(0.01)


def run(args: argparse.Namespace) -> dict:
    served = parse_variants(args.variant)
    server = service(
        served,
        queue_limit=args.queue_limit,
        max_images_per_request=min(args.queue_limit, 64),  # at most the queue, which the settings require
        admin_token=ADMIN_TOKEN,
    )
    pid = server.process.pid
    memory: list[tuple[float, int]] = []
    load_statuses: Counter = Counter()
    steady_statuses: Counter = Counter()  # good traffic within capacity: every request must be answered 200
    bad_statuses: Counter = Counter()
    socket_errors = 0
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as folder:
            write_bodies(args.data_root, args.images, Path(folder))
            stop = threading.Event()
            bad = threading.Thread(target=bad_input_client, args=(server.url, stop, bad_statuses))
            bad.start()
            memory.append((0.0, resident_kib(pid)))
            phase = 0
            while time.monotonic() - started < args.minutes * 60:
                burst = phase % 3 == 2
                concurrency = args.burst_concurrency if burst else args.concurrency
                row = run_wrk(f"{server.url}/v1/classify", concurrency, args.phase_seconds, Path(folder), args.images)
                load_statuses.update(row["statuses"])
                if not burst:
                    steady_statuses.update(row["statuses"])
                socket_errors += row["socket_errors"]
                memory.append((round(time.monotonic() - started, 1), resident_kib(pid)))
                print(
                    f"phase {phase} ({'burst' if burst else 'steady'}, c={concurrency}): {row['statuses']}, "
                    f"PSS {memory[-1][1] / 1024:.0f} MiB",
                    flush=True,
                )
                phase += 1
            stop.set()
            bad.join()
        ready = httpx.get(f"{server.url}/healthz/ready").status_code
    finally:
        server.stop()
    unexpected_5xx = {
        k: v for k, v in (load_statuses + bad_statuses).items() if isinstance(k, int) and k >= 500 and k != 503
    }
    return {
        "machine": machine_description(),
        "minutes": round((time.monotonic() - started) / 60, 2),
        "variants": list(served),
        "load": {
            "steady_concurrency": args.concurrency,
            "burst_concurrency": args.burst_concurrency,
            "queue_limit_per_variant": args.queue_limit,
            "phase_seconds": args.phase_seconds,
        },
        "load_statuses": {str(k): v for k, v in sorted(load_statuses.items())},
        "steady_statuses": {str(k): v for k, v in sorted(steady_statuses.items())},
        "steady_unanswered": sum(n for status, n in steady_statuses.items() if status != 200),
        "bad_input_statuses": {str(k): v for k, v in sorted(bad_statuses.items(), key=str)},
        "socket_errors": socket_errors,
        "unexpected_5xx": unexpected_5xx,
        "ready_after": ready == 200,
        "rss_mib_first": memory[0][1] / 1024,
        "rss_mib_after_first_phase": memory[1][1] / 1024 if len(memory) > 1 else None,
        "rss_mib_last": memory[-1][1] / 1024,
        "rss_series": memory,
    }


def quarter_peaks_mib(series: list[tuple[float, int]]) -> list[float | None]:
    """The largest RSS sample (KiB in, MiB out) in each quarter of the run's duration: a leak keeps climbing,
    allocator warm-up levels off."""
    end = max(seconds for seconds, _ in series) or 1.0
    peaks: list[float | None] = [None] * 4
    for seconds, kib in series:
        quarter = min(int(4 * seconds / end), 3)
        peaks[quarter] = max(peaks[quarter] or 0.0, kib / 1024)
    return peaks


def to_markdown(result: dict) -> str:
    return (
        "\n".join(
            [
                f"Soak: {result['minutes']} minutes of mixed load over the variants {', '.join(result['variants'])} "
                f"on {result['machine']}: {result['load']['phase_seconds']} s phases of wrk at concurrency "
                f"{result['load']['steady_concurrency']}, every third a burst at {result['load']['burst_concurrency']} "
                f"(queue limit {result['load']['queue_limit_per_variant']} images per variant), while another client "
                "sends bad inputs.",
                "",
                f"- load responses by status: {result['load_statuses']}; socket errors: {result['socket_errors']}",
                f"- steady phases (good traffic within capacity) by status: {result['steady_statuses']}: "
                f"{result['steady_unanswered']} not answered 200",
                f"- bad-input responses by status: {result['bad_input_statuses']}",
                f"- 5xx other than 503: {result['unexpected_5xx'] or 'none'}; "
                f"ready afterwards: {result['ready_after']}",
                "- memory (PSS of the service's process and its inference workers): "
                f"{result['rss_mib_first']:.0f} MiB at start, "
                f"{result['rss_mib_after_first_phase']:.0f} MiB after the first phase, "
                f"{result['rss_mib_last']:.0f} MiB at the end",
                "- peak memory in each quarter of the run: "
                + " / ".join("–" if peak is None else f"{peak:.0f}" for peak in quarter_peaks_mib(result["rss_series"]))
                + " MiB",
            ]
        )
        + "\n"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help="folder holding cifar-10-batches-py (default: $BLOCKDROP_DATA_ROOT)")
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the whole run")
    parser.add_argument("--phase-seconds", type=int, default=20, help="length of each wrk phase")
    parser.add_argument("--concurrency", type=int, default=16, help="steady phases")
    parser.add_argument("--burst-concurrency", type=int, default=256, help="every third phase")
    parser.add_argument(
        "--queue-limit", type=int, default=16, help="the service's queue limit per variant (bursts pass it in all)"
    )
    parser.add_argument("--images", type=int, default=256, help="distinct test images posted in turn")
    add_variant_option(parser, "serve this artifact (repeatable, even traffic split); default: the default variants")
    parser.add_argument("--out", default=str(RESULTS), help="folder for soak.json and soak.md")


def execute(args: argparse.Namespace) -> int:
    result = run(args)
    write_results(args.out, "soak", result, to_markdown(result))
    return 0 if not result["unexpected_5xx"] and result["ready_after"] else 1

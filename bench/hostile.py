"""Hostile input and faults against ``blockdrop serve`` with its defaults (the five shipped variants, worker
processes), each measured against the issue's targets: every repro's status and the longest ``/healthz/live`` took
meanwhile; the memory of the service's process tree through bursts of 16 huge and 16 model-bound PNGs, and the
latency of good requests beside them; a hundred 10 MB bodies sent all but their last byte (the body budget and
timeout: statuses and memory); three hundred 1 MB gRPC messages sent the same way (the gRPC bounds: held, refused,
memory, when their connections end); a hung worker (SIGSTOP): how soon its variant is not ready, how many unkeyed
requests fail, how soon a pinned one is refused; c=512 over the five variants: p99 against twice the queue-wait
budget plus the slowest batch time; and the fork server the workers come from, stopped while a worker is lost (how
soon the worker is back), then killed (whether anything restarts). Results go to
``bench/results/hostile.{json,md}``:

    blockdrop bench hostile --data-root DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import (
    RESULTS,
    machine_description,
    metric_samples,
    process_tree,
    tree_memory_kib,
    worker_of,
    write_results,
)
from bench.hostile_inputs import HALF_HEADER, hostile_requests, huge_header, png, send_raw, status_of
from bench.load import free_port, run_wrk, service, write_bodies
from bench.stalled_grpc import StalledCall, small_infer, wait_until_closed
from bench.variants import add_variant_option, parse_variants
from service.cluster import processes

TOKEN = "bench-hostile"
QUEUE_WAIT_BUDGET_S = 0.25  # the service's default, which this run keeps


class Repeating(threading.Thread):
    """Calls ``action`` every ``every_s`` until stopped, keeping what it returns."""

    def __init__(self, action, every_s: float):
        super().__init__(daemon=True)
        self.action, self.every_s, self.samples = action, every_s, []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(self.action())
            self._stop_event.wait(self.every_s)

    def __enter__(self) -> Repeating:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop_event.set()
        self.join()


def liveness_probe(url: str) -> Repeating:
    client = httpx.Client(timeout=30)

    def probe() -> float:
        started = time.perf_counter()
        client.get(url + "/healthz/live")
        return (time.perf_counter() - started) * 1000

    return Repeating(probe, 0.02)


def memory_sampler(pid: int) -> Repeating:
    return Repeating(lambda: (time.monotonic(), tree_memory_kib(pid)["rss_kib"] / 1024), 0.05)


def good_traffic(url: str, bodies: list[bytes]) -> Repeating:
    """One client sending good images back to back: (status, milliseconds) per request."""
    client = httpx.Client(timeout=30)
    turn = iter(range(10**9))

    def request() -> tuple[int, float]:
        body = bodies[next(turn) % len(bodies)]
        started = time.perf_counter()
        status = client.post(url + "/v1/classify", content=body, headers={"content-type": "image/png"}).status_code
        return status, (time.perf_counter() - started) * 1000

    return Repeating(request, 0.0)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else (values[0] if values else 0.0)


def repros(url: str, port: int) -> list[dict]:
    rows = []
    for hostile in hostile_requests(TOKEN):
        with liveness_probe(url) as live, httpx.Client(timeout=60) as client:
            started = time.perf_counter()
            status = client.request(hostile.method, url + hostile.path, content=hostile.body, headers=hostile.headers)
            seconds = time.perf_counter() - started
        rows.append(_repro_row(hostile.name, status.status_code, hostile.expected, seconds, live.samples))
    raw_cases = [  # built before the clock starts: making 128 MB holds this process's GIL for a while
        ("one 128 MB header", huge_header(128 * 2**20), (431,)),
        ("half a header, then silence", HALF_HEADER, (408,)),
    ]
    for name, payload, expected in raw_cases:
        with liveness_probe(url) as live:
            started = time.perf_counter()
            status = status_of(send_raw(port, payload, 60))
            seconds = time.perf_counter() - started
        rows.append(_repro_row(name, status, expected, seconds, live.samples))
    return rows


def _repro_row(name: str, status: int | None, expected: tuple[int, ...], seconds: float, live: list[float]) -> dict:
    return {
        "case": name,
        "status": status,
        "as_expected": status in expected,
        "answered_in_s": round(seconds, 3),
        "live_max_ms": round(max(live), 1) if live else None,
    }


def back_near_idle_after(pid: int, idle_mib: float, since: float, within_mib: float | None = None) -> float | None:
    """Seconds from ``since`` until the process tree's RSS is within ``within_mib`` (default: 10 %) of ``idle_mib``
    (None: not within 10 s)."""
    margin = idle_mib * 0.1 if within_mib is None else within_mib
    while time.monotonic() - since < 10:
        if tree_memory_kib(pid)["rss_kib"] / 1024 <= idle_mib + margin:
            return round(time.monotonic() - since, 1)
        time.sleep(0.2)
    return None


def burst(url: str, pid: int, bodies: list[bytes], image: bytes, count: int, idle_p99_ms: float) -> dict:
    """``count`` copies of ``image`` at once, with good traffic and the memory sampled throughout."""
    idle_mib = tree_memory_kib(pid)["rss_kib"] / 1024
    with memory_sampler(pid) as memory, good_traffic(url, bodies) as good, liveness_probe(url) as live:
        time.sleep(0.5)
        answers = send_burst(url, image, count)
        burst_done = time.monotonic()
        time.sleep(1.0)
    back_after = back_near_idle_after(pid, idle_mib, burst_done)
    latencies = [ms for status, ms in good.samples if status == 200]
    return {
        "statuses": {str(s): answers.count(s) for s in sorted(set(answers))},
        "idle_rss_mib": round(idle_mib),
        "peak_rss_mib": round(max(mib for _, mib in memory.samples)),
        "peak_above_idle_mib": round(max(mib for _, mib in memory.samples) - idle_mib),
        "back_within_10_percent_after_s": back_after,
        "good_requests": len(good.samples),
        "good_failed": sum(status != 200 for status, _ in good.samples),
        "good_p99_ms": round(p99(latencies), 1),
        "good_p99_over_idle": round(p99(latencies) / idle_p99_ms, 2) if idle_p99_ms else None,
        "live_max_ms": round(max(live.samples), 1),
    }


BACK_NEAR_IDLE_MIB = 32


def slow_bodies(url: str, pid: int, count: int, size: int, wait_s: float) -> dict:
    """``count`` connections, each sending the headers of a ``size``-byte PNG body and all of it but the last byte,
    then waiting: the bodies in progress stay within the service's budget (503 past it), and the ones it held end
    with a 408 at the body timeout. The service's memory is sampled throughout."""
    port = int(url.rsplit(":", 1)[1])
    head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % size
    chunk = b"\0" * (1024 * 1024)
    idle_mib = tree_memory_kib(pid)["rss_kib"] / 1024
    connections = []
    with memory_sampler(pid) as memory, liveness_probe(url) as live:
        started = time.monotonic()
        for _ in range(count):
            connection = socket.create_connection(("127.0.0.1", port), timeout=wait_s)
            connections.append(connection)
            with contextlib.suppress(OSError):  # refused mid-body: the service closed its side
                connection.sendall(head)
                for offset in range(0, size - 1, len(chunk)):
                    connection.sendall(chunk[: min(len(chunk), size - 1 - offset)])
        sent_s = time.monotonic() - started
        statuses, answered_s = [], []
        for connection in connections:
            try:
                answer = connection.recv(64)
            except OSError:
                answer = b""
            statuses.append(int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None)
            answered_s.append(time.monotonic() - started)
            connection.close()
        held_s = time.monotonic() - started
    # the service hands the bodies' pages back a moment after the last one is done; 10 % of the whole tree's idle
    # RSS would be more than the body budget itself
    back_after = back_near_idle_after(pid, idle_mib, time.monotonic(), BACK_NEAR_IDLE_MIB)
    timed_out = [s for status, s in zip(statuses, answered_s) if status == 408]
    return {
        "connections": count,
        "body_bytes": size,
        "sent_in_s": round(sent_s, 1),
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses), key=str)},
        "last_408_after_s": round(max(timed_out), 1) if timed_out else None,
        "idle_rss_mib": round(idle_mib),
        "peak_above_idle_mib": round(max(mib for _, mib in memory.samples) - idle_mib),
        "back_within_32_mib_after_s": back_after,  # of closing them (None: not within 10 s)
        "after_close_above_idle_mib": round(tree_memory_kib(pid)["rss_kib"] / 1024 - idle_mib),
        "held_s": round(held_s, 1),
        "live_max_ms": round(max(live.samples), 1),
    }


def stalled_grpc(grpc_port: int, pid: int, model: str, count: int, size: int, wait_s: float) -> dict:
    """``count`` connections, each a gRPC ModelInfer whose ``size``-byte message is sent all but its last byte: the
    service holds those its gRPC bounds leave room for, refuses the rest, and ends them all with their connections'
    life; the service's memory is sampled throughout. Then one message declaring more than any request can weigh."""
    idle_mib = tree_memory_kib(pid)["rss_kib"] / 1024
    with memory_sampler(pid) as memory:
        started = time.monotonic()
        calls = [StalledCall(grpc_port, size) for _ in range(count)]
        sent_s = time.monotonic() - started
        for call in calls:
            call.read(0.01)
        refused = sum(call.refused for call in calls)
        while_held = small_infer(grpc_port, model).name
        closed_after = wait_until_closed(calls, wait_s)
        closed_at = time.monotonic()
    back_after = back_near_idle_after(pid, idle_mib, closed_at, BACK_NEAR_IDLE_MIB)
    for call in calls:
        call.close()
    oversized = StalledCall(grpc_port, 10 * 1024 * 1024)
    oversized_refused = oversized.refused_within(5)
    oversized.close()
    return {
        "connections": count,
        "message_bytes": size,
        "sent_in_s": round(sent_s, 1),
        "held": count - refused,
        "refused": refused,
        "small_infer_while_held": while_held,
        "all_closed_after_s": closed_after,  # from the first connection (None: not within wait_s)
        "idle_rss_mib": round(idle_mib),
        "peak_above_idle_mib": round(max(mib for _, mib in memory.samples) - idle_mib),
        "back_within_32_mib_after_s": back_after,  # of the last connection's close (None: not within 10 s)
        "after_close_above_idle_mib": round(tree_memory_kib(pid)["rss_kib"] / 1024 - idle_mib),
        "small_infer_after": small_infer(grpc_port, model).name,
        "declared_10_mib_refused": oversized_refused,
    }


def send_burst(url: str, image: bytes, count: int) -> list[int]:
    """``count`` POSTs of ``image`` at once, from another process (``bench/burst_sender.py``)."""
    command = [sys.executable, "-m", "bench.burst_sender", url.rsplit(":", 1)[1], str(count)]
    done = subprocess.run(command, input=image, capture_output=True, check=True, cwd=Path(__file__).parent.parent)
    return json.loads(done.stdout)


def worker_up(url: str, variant: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    ups = [value for labels, value in metric_samples(text, "blockdrop_worker_up") if labels.get("variant") == variant]
    return ups[0] if ups else -1.0


def hung_worker(url: str, pid: int, bodies: list[bytes], variant: str = "full") -> dict:
    """SIGSTOP one variant's worker under unkeyed traffic; the time to not-ready, the failures, a pinned request."""
    hung = worker_of(pid, variant)
    with good_traffic(url, bodies) as unkeyed, good_traffic(url, bodies) as unkeyed_too:
        time.sleep(1.0)
        os.kill(hung, signal.SIGSTOP)
        stopped = time.monotonic()
        noticed = None
        while time.monotonic() - stopped < 15:
            if worker_up(url, variant) == 0:
                noticed = round(time.monotonic() - stopped, 2)
                break
            time.sleep(0.05)
        started = time.perf_counter()
        pinned = httpx.post(
            url + f"/v1/classify?variant={variant}",
            content=bodies[0],
            headers={"content-type": "image/png"},
            timeout=30,
        )
        pinned_s = time.perf_counter() - started
        replaced, pinned_at = None, time.monotonic()  # the traffic goes on 5 s, the poll until the replacement is up
        while time.monotonic() - pinned_at < 5 or (replaced is None and time.monotonic() - stopped < 60):
            if replaced is None and noticed is not None and worker_up(url, variant) == 1:
                replaced = round(time.monotonic() - stopped, 2)
            time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(hung, signal.SIGCONT)
    samples = unkeyed.samples + unkeyed_too.samples
    return {
        "variant": variant,
        "not_ready_after_s": noticed,
        "unkeyed_requests": len(samples),
        "unkeyed_failed_percent": round(100 * sum(s != 200 for s, _ in samples) / max(1, len(samples)), 2),
        "pinned_status": pinned.status_code,
        "pinned_retry_after": pinned.headers.get("retry-after"),
        "pinned_answered_in_s": round(pinned_s, 3),
        "hung_worker_killed": not processes.alive(hung),
        "replaced_after_s": replaced,  # from the SIGSTOP until its replacement was up (None: not within 60 s)
    }


def worker_restarts(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(value for _, value in metric_samples(text, "blockdrop_worker_restarts_total"))


def fork_server_faults(url: str, pid: int, bodies: list[bytes], variant: str = "full") -> dict:
    """Under unkeyed traffic: SIGSTOP the fork server and SIGKILL ``variant``'s worker, until the worker is back
    (the service ends the stopped fork server, a new one forks the replacement); then SIGKILL the new fork
    server and watch for 3 s whether any worker is restarted or ends."""
    servers = [member for member in process_tree(pid) if _is_server(member)]
    victim = worker_of(pid, variant)
    fork_server = processes.parent(victim)
    with good_traffic(url, bodies) as unkeyed:
        time.sleep(0.5)
        os.kill(fork_server, signal.SIGSTOP)
        os.kill(victim, signal.SIGKILL)
        lost = time.monotonic()
        noticed = back = None
        try:
            while time.monotonic() - lost < 60:
                up = worker_up(url, variant)
                noticed = noticed or (up == 0)
                if noticed and up == 1:
                    back = round(time.monotonic() - lost, 2)
                    break
                time.sleep(0.05)
        finally:
            stopped_one_ended = not processes.alive(fork_server)
            if not stopped_one_ended:
                os.kill(fork_server, signal.SIGCONT)
        # the others were forked by the ended fork server (init has them now); the replacement by a new one
        replacement = worker_of(pid, variant)
        servers = [member for member in servers if member != victim] + [replacement]
        restarts = worker_restarts(url)
        os.kill(processes.parent(replacement), signal.SIGKILL)
        time.sleep(3.0)  # thirty rounds of every worker's supervising thread
        restarted = worker_restarts(url) - restarts
        ended = sum(not processes.alive(member) for member in servers)
    samples = unkeyed.samples
    return {
        "variant": variant,
        "worker_back_after_s": back,  # from the SIGKILL, with the fork server stopped (None: not within 60 s)
        "stopped_fork_server_ended": stopped_one_ended,
        "servers_restarted_after_fork_server_killed": restarted,
        "servers_ended_after_fork_server_killed": ended,
        "servers": len(servers),
        "unkeyed_requests": len(samples),
        "unkeyed_failed_percent": round(100 * sum(s != 200 for s, _ in samples) / max(1, len(samples)), 2),
    }


def _is_server(pid: int) -> bool:
    """A worker or model server (``bd:VARIANT``), or an API server (``bd-api-N``)."""
    return (found := processes.status(pid)) is not None and found.name.startswith("bd")


def slowest_batch_seconds(url: str) -> float:
    """The largest mean batch time of any variant so far (from blockdrop_inference_seconds)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    sums = {labels["variant"]: value for labels, value in metric_samples(text, "blockdrop_inference_seconds_sum")}
    counts = {labels["variant"]: value for labels, value in metric_samples(text, "blockdrop_inference_seconds_count")}
    return max(sums[v] / counts[v] for v in sums if counts.get(v, 0) > 0)


def overload(url: str, folder: Path, images: int, seconds: int) -> dict:
    """c=512 of unkeyed requests spread over the variants; refusals checked for Retry-After as they come."""
    refusals: list[str | None] = []

    def sample_refusal() -> None:
        answer = httpx.post(
            url + "/v1/classify",
            content=(folder / "image_0.png").read_bytes(),
            headers={"content-type": "image/png"},
            timeout=30,
        )
        if answer.status_code == 503:
            refusals.append(answer.headers.get("retry-after"))

    with Repeating(sample_refusal, 0.05):
        row = run_wrk(url + "/v1/classify", 512, seconds, folder, images)
    slowest = slowest_batch_seconds(url)
    bound_ms = 2 * (QUEUE_WAIT_BUDGET_S + slowest) * 1000
    return {
        "concurrency": 512,
        "seconds": seconds,
        "statuses": {str(k): v for k, v in sorted(row["statuses"].items())},
        "requests_per_second": round(row["requests_per_second"], 1),
        "p50_ms": round(row["p50_ms"], 1),
        "p99_ms": round(row["p99_ms"], 1),
        "slowest_mean_batch_ms": round(slowest * 1000, 1),
        "p99_bound_ms": round(bound_ms, 1),
        "p99_within_bound": row["p99_ms"] <= bound_ms,
        "sampled_refusals": len(refusals),
        "sampled_refusals_with_retry_after": sum(r is not None for r in refusals),
        "socket_errors": row["socket_errors"],
    }


def run(args: argparse.Namespace) -> dict:
    settings = {
        "admin_token": TOKEN,
        "header_timeout_s": args.header_timeout_s,
        "body_timeout_s": args.body_timeout_s,
        "api_servers": args.api_servers,
        "grpc_port": free_port(),
    }
    server = service(parse_variants(args.variant), **settings)
    pid = server.process.pid
    result: dict = {"machine": machine_description(), "api_servers": args.api_servers}
    try:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            bodies = write_bodies(args.data_root, args.images, folder)
            run_wrk(server.url + "/v1/classify", 32, 3, folder, args.images)  # warm-up
            with good_traffic(server.url, bodies) as idle:
                time.sleep(args.idle_seconds)
            idle_p99 = p99([ms for status, ms in idle.samples if status == 200])
            result["idle"] = {
                "good_p99_ms": round(idle_p99, 1),
                "rss_mib": round(tree_memory_kib(pid)["rss_kib"] / 1024),
            }
            result["repros"] = repros(server.url, int(server.url.rsplit(":", 1)[1]))
            result["bursts"] = {
                "16 x 6300x6300 PNG": burst(server.url, pid, bodies, png((6300, 6300)), 16, idle_p99),
                "16 x 2048x2048 PNG (the model's bound)": burst(
                    server.url, pid, bodies, png((2048, 2048), "RGB"), 16, idle_p99
                ),
            }
            result["slow_bodies"] = slow_bodies(
                server.url, pid, args.slow_bodies, 10 * 1024 * 1024 - 1024, args.body_timeout_s + 15
            )
            if args.stalled_grpc:
                # a connection lives BODY_TIMEOUT_S, its calls in flight REQUEST_TIMEOUT_S more (10 s by default)
                wait_s = args.body_timeout_s + 25
                result["stalled_grpc"] = stalled_grpc(
                    settings["grpc_port"], pid, args.hung_variant, args.stalled_grpc, 1_000_000, wait_s
                )
            result["hung_worker"] = hung_worker(server.url, pid, bodies, args.hung_variant)
            result["overload"] = overload(server.url, folder, args.images, args.overload_seconds)
            # last: the killed fork server's children leave the service's process tree (init adopts them)
            result["fork_server"] = fork_server_faults(server.url, pid, bodies, args.hung_variant)
    finally:
        server.stop()
    return result


def to_markdown(result: dict) -> str:
    api_servers = result.get("api_servers", 1)
    shape = "worker processes" if api_servers == 1 else f"{api_servers} API servers and a model server per variant"
    lines = [
        f"`blockdrop serve` with its defaults (five variants, {shape}) on {result['machine']}. Idle: good "
        f"requests p99 {result['idle']['good_p99_ms']} ms (one client), service process tree "
        f"{result['idle']['rss_mib']} MiB RSS.",
        "",
        "| repro | status | as expected | answered in | longest /healthz/live meanwhile |",
        "|---|---:|---|---:|---:|",
    ]
    for row in result["repros"]:
        lines.append(
            f"| {row['case']} | {row['status']} | {'yes' if row['as_expected'] else 'NO'} | {row['answered_in_s']} s "
            f"| {row['live_max_ms']} ms |"
        )
    lines += [
        "",
        "| burst | statuses | peak RSS above idle | back within 10 % of idle | good p99 (x idle) | good failed | "
        "longest /healthz/live |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["bursts"].items():
        back = (
            "not within 10 s"
            if row["back_within_10_percent_after_s"] is None
            else (f"{row['back_within_10_percent_after_s']} s")
        )
        lines.append(
            f"| {name} | {row['statuses']} | {row['peak_above_idle_mib']} MiB | {back} | {row['good_p99_ms']} ms "
            f"({row['good_p99_over_idle']}x) | {row['good_failed']} of {row['good_requests']} | "
            f"{row['live_max_ms']} ms |"
        )
    slow = result.get("slow_bodies")
    if slow is not None:
        lines += [
            "",
            f"Slow bodies: {slow['connections']} connections each sent the headers of a {slow['body_bytes']:,}-byte "
            f"PNG and all of it but the last byte (in {slow['sent_in_s']} s), then waited: statuses "
            f"{slow['statuses']}, the last 408 {slow['last_408_after_s']} s after the first connection; peak RSS "
            f"{slow['peak_above_idle_mib']} MiB above idle; once all were closed, back within "
            f"{BACK_NEAR_IDLE_MIB} MiB of idle after {slow['back_within_32_mib_after_s']} s "
            f"({slow['after_close_above_idle_mib']} MiB above idle at the end); longest /healthz/live "
            f"{slow['live_max_ms']} ms.",
        ]
    stalled = result.get("stalled_grpc")
    if stalled is not None:
        lines += [
            "",
            f"Stalled gRPC: {stalled['connections']} connections each sent a ModelInfer whose "
            f"{stalled['message_bytes']:,}-byte message lacked its last byte (in {stalled['sent_in_s']} s): "
            f"{stalled['held']} held, {stalled['refused']} refused at once (RESOURCE_EXHAUSTED); a small ModelInfer "
            f"meanwhile: {stalled['small_infer_while_held']}; peak RSS {stalled['peak_above_idle_mib']} MiB above "
            f"idle; every connection closed by the service {stalled['all_closed_after_s']} s after the first; back "
            f"within {BACK_NEAR_IDLE_MIB} MiB of idle {stalled['back_within_32_mib_after_s']} s after the "
            f"last ({stalled['after_close_above_idle_mib']} MiB above idle then); a small ModelInfer then: "
            f"{stalled['small_infer_after']}. A message declaring 10 MiB refused from its length: "
            f"{stalled['declared_10_mib_refused']}.",
        ]
    hung, over = result["hung_worker"], result["overload"]
    lines += [
        "",
        f"Hung worker (SIGSTOP of `{hung['variant']}`'s, two clients sending unkeyed requests): not ready after "
        f"{hung['not_ready_after_s']} s; {hung['unkeyed_failed_percent']} % of {hung['unkeyed_requests']} unkeyed "
        f"requests failed; a pinned request got {hung['pinned_status']} (Retry-After {hung['pinned_retry_after']}) in "
        f"{hung['pinned_answered_in_s']} s; the hung process was killed: {hung['hung_worker_killed']}; its "
        f"replacement was up {hung['replaced_after_s']} s after the SIGSTOP.",
        "",
        f"Overload (wrk c={over['concurrency']}, {over['seconds']} s, unkeyed over the five variants): statuses "
        f"{over['statuses']}, {over['requests_per_second']} req/s, p50 {over['p50_ms']} ms, p99 {over['p99_ms']} ms "
        f"against the bound 2 x (queue-wait budget {QUEUE_WAIT_BUDGET_S * 1000:.0f} ms + slowest mean batch "
        f"{over['slowest_mean_batch_ms']} ms) = {over['p99_bound_ms']} ms: "
        f"{'within' if over['p99_within_bound'] else 'OVER'}; {over['sampled_refusals_with_retry_after']} of "
        f"{over['sampled_refusals']} sampled 503s carried Retry-After; socket errors {over['socket_errors']}.",
    ]
    fork = result.get("fork_server")
    if fork is not None:
        lines += [
            "",
            f"Fork server (one client sending unkeyed requests): stopped (SIGSTOP) while `{fork['variant']}`'s "
            f"worker was killed, the worker was back {fork['worker_back_after_s']} s later (the stopped fork server "
            f"ended by the service: {fork['stopped_fork_server_ended']}); the new fork server then killed "
            f"(SIGKILL), {fork['servers_restarted_after_fork_server_killed']:.0f} of {fork['servers']} servers were "
            f"restarted and {fork['servers_ended_after_fork_server_killed']} ended within 3 s; "
            f"{fork['unkeyed_failed_percent']} % of {fork['unkeyed_requests']} unkeyed requests failed throughout.",
        ]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help="folder holding cifar-10-batches-py (default: $BLOCKDROP_DATA_ROOT)")
    parser.add_argument("--images", type=int, default=64, help="distinct good test images, posted in turn")
    parser.add_argument("--idle-seconds", type=float, default=5, help="good traffic alone, for the idle p99")
    parser.add_argument("--overload-seconds", type=int, default=20, help="length of the c=512 run")
    parser.add_argument("--header-timeout-s", type=float, default=10, help="the service's header timeout")
    parser.add_argument("--body-timeout-s", type=float, default=30, help="the service's body timeout")
    parser.add_argument(
        "--slow-bodies", type=int, default=100, help="connections that send all of a 10 MB body but its last byte"
    )
    parser.add_argument(
        "--stalled-grpc",
        type=int,
        default=300,
        help="gRPC connections that send all of a 1 MB ModelInfer but its last byte (0: skip the step)",
    )
    parser.add_argument("--hung-variant", default="full", help="the variant whose worker is stopped")
    parser.add_argument(
        "--api-servers", type=int, default=1, help="API server processes (1: the single process; N: the supervisor's)"
    )
    add_variant_option(parser, "serve this artifact (repeatable, even traffic split); default: the default variants")
    parser.add_argument("--out", default=str(RESULTS), help="folder for hostile.json and hostile.md")


def execute(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise ValueError("wrk is not installed (Debian: apt-get install wrk)")
    result = run(args)
    write_results(args.out, "hostile", result, to_markdown(result))
    return 0

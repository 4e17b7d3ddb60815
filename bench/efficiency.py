"""How much of the model's own speed reaches the user: model-alone img/s per variant (batch 1 and 32, the served
model: folded, channels-last), served req/s through ``blockdrop serve`` at several concurrencies (wrk, PNG
bodies), the efficiency (served req/s at c=32 over model-alone img/s at batch 32), how much of each variant's
speed-up over ``full`` survives at the service, p50 / p99, and the HTTP overhead at concurrency 1. With
``--baseline-checkout DIR`` the same service from another checkout (an older commit) is loaded in the same run,
the two taking turns, for the ratio of their served req/s.

Needs ``wrk`` (Debian package). Results go to ``bench/results/efficiency.{json,md}``:

    blockdrop bench efficiency --data-root DIR
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from bench.common import (
    RESULTS,
    commit_of,
    machine_description,
    paired_median_ratio,
    positive_int,
    tree_memory_kib,
    write_results,
)
from bench.load import Process, free_port, http_overhead, run_wrk, service, summarise
from bench.variants import add_variant_option, parse_variants
from service.config import VariantSettings
from service.imaging import ImagePreprocessor
from service.variants import Variant, load_variant

SAMPLES = Path(__file__).resolve().parent.parent / "service" / "samples"
MODEL_BATCHES = (1, 32)


def load_bodies(data_root: str | None, count: int, folder: Path) -> list[bytes]:
    """``count`` CIFAR-10 test images as PNG files ``image_I.png`` in ``folder`` (wrk posts them in turn); without a
    data root, the sample images that ship with the service."""
    if data_root:
        from training.data import load_cifar

        test = load_cifar(data_root, "test")
        pictures = [Image.fromarray(test.images[i].permute(1, 2, 0).numpy()) for i in range(count)]
    else:
        pictures = [Image.open(path).convert("RGB") for path in sorted(SAMPLES.glob("*.png"))]
    bodies = []
    for i, picture in enumerate(pictures):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
        (folder / f"image_{i}.png").write_bytes(bodies[-1])
    return bodies


@torch.inference_mode()
def model_rate(variant: Variant, batch: torch.Tensor, seconds: float) -> float:
    """Images per second of ``variant.infer`` (the service's own call) on ``batch``, repeated for ``seconds``."""
    for _ in range(3):
        variant.infer(batch)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        variant.infer(batch)
        runs += 1
    return runs * len(batch) / (time.perf_counter() - started)


def model_alone(
    variants: dict[str, VariantSettings], bodies: list[bytes], seconds: float, repeats: int
) -> dict[str, dict]:
    """Model-alone img/s at each batch size, the variants taking turns round by round; also mean FLOPs."""
    loaded = {name: load_variant(settings, "cpu") for name, settings in variants.items()}
    rows: dict[str, dict] = {}
    for name, variant in loaded.items():
        decode = ImagePreprocessor(variant.manifest.input, 10**8)
        images = torch.stack([decode(body) for body in bodies])
        batches = {n: images[torch.arange(n) % len(images)] for n in MODEL_BATCHES}
        result = variant.infer(batches[max(MODEL_BATCHES)])
        rows[name] = {"batches": batches, "flops_mean": result.flops.double().mean().item(), "each": {}}
    threads = torch.get_num_threads()
    for _ in range(repeats):
        for name, variant in loaded.items():
            for n, batch in rows[name]["batches"].items():
                rows[name]["each"].setdefault(str(n), []).append(model_rate(variant, batch, seconds))
            # the largest batch once more on the one thread a worker process gets by default: what the served
            # rate could reach if nothing but the model used the CPU
            torch.set_num_threads(1)
            try:
                batch = rows[name]["batches"][max(MODEL_BATCHES)]
                rows[name].setdefault("one_thread", []).append(model_rate(variant, batch, seconds))
            finally:
                torch.set_num_threads(threads)
    return {
        name: {
            "flops_mean": row["flops_mean"],
            "img_per_s_each": row["each"],
            "img_per_s": {n: statistics.median(each) for n, each in row["each"].items()},
            "img_per_s_b32_one_thread": statistics.median(row["one_thread"]),
        }
        for name, row in rows.items()
    }


def baseline_service(checkout: Path, variants: dict[str, VariantSettings], **settings: object) -> Process:
    """``blockdrop serve`` from another checkout (its own code, these artifacts), on a free port."""
    port = free_port()
    served = [variant.model_dump(mode="json", exclude_defaults=True) for variant in variants.values()]
    env = {"BLOCKDROP_PORT": str(port), "BLOCKDROP_VARIANTS": json.dumps(served), "PYTHONPATH": str(checkout)}
    env |= {f"BLOCKDROP_{key.upper()}": str(value) for key, value in settings.items()}
    command = [sys.executable, "-m", "cli.main", "serve", "--log-level", "warning"]
    return Process(command, env, port, "/healthz/ready", cwd=checkout)


def served(args: argparse.Namespace, variants: dict[str, VariantSettings], folder: Path, count: int) -> dict:
    """wrk at every concurrency against every variant (in turns), plus the HTTP overhead at concurrency 1."""
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    first, *more = api_server_counts(args.api_servers)
    server = service(variants, queue_limit=1024, **({"api_servers": first} if first else {}))
    servers = {"service": server}
    try:
        for count in more:  # the same service with other API server counts, on the reference variant
            servers[f"api-servers={count}"] = service(variants, queue_limit=1024, api_servers=count)
        if args.baseline_checkout:
            servers["baseline"] = baseline_service(Path(args.baseline_checkout), variants, queue_limit=1024)
        urls = {
            (label, name): f"{s.url}/v1/classify?variant={name}"
            for label, s in servers.items()
            for name in variants
            if label == "service" or name == args.reference
        }
        for url in urls.values():
            run_wrk(url, 8, args.warmup_seconds, folder, count)
        bodies = [(folder / f"image_{i}.png").read_bytes() for i in range(count)]
        overhead = {
            name: http_overhead(f"{server.url}/v1/classify?variant={name}", bodies, args.overhead_requests)
            for name in variants
        }
        memory = {label: tree_memory_kib(s.process.pid) for label, s in servers.items()}
        rows = []
        for concurrency in concurrencies:
            samples: dict[tuple[str, str], list[dict]] = {key: [] for key in urls}
            for _ in range(args.repeats):
                for key, url in urls.items():
                    pid = servers[key[0]].process.pid
                    samples[key].append(run_wrk(url, concurrency, args.seconds, folder, count, None, pid))
            for (label, name), runs in samples.items():
                rows.append({"server": label, "variant": name} | summarise(runs))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        for s in servers.values():
            s.stop()
    return {"runs": rows, "overhead": overhead, "memory_kib": memory}


def summary(result: dict) -> dict:
    """Efficiency, the speed-ups at the model and at the service, and how much of each survives."""
    model, runs, reference = result["model_alone"], result["served"]["runs"], result.get("reference", "full")
    at = {(r["server"], r["variant"], r["concurrency"]): r for r in runs}
    concurrencies = sorted({r["concurrency"] for r in runs})
    out: dict = {"variants": {}}
    for name, row in model.items():
        c32 = at.get(("service", name, 32))
        entry = {"efficiency_c32": c32["requests_per_second"] / row["img_per_s"]["32"] if c32 else None}
        if "img_per_s_b32_one_thread" in row:  # the model on one worker thread, over the model on all threads
            entry["one_thread_share_b32"] = row["img_per_s_b32_one_thread"] / row["img_per_s"]["32"]
        full = model.get(reference)
        if full is not None and name != reference:
            entry["flops_ideal"] = full["flops_mean"] / row["flops_mean"]
            for n in MODEL_BATCHES:
                entry[f"model_speedup_b{n}"] = paired_median_ratio(
                    row["img_per_s_each"][str(n)], full["img_per_s_each"][str(n)]
                )
            for concurrency in concurrencies:
                mine, theirs = at.get(("service", name, concurrency)), at.get(("service", reference, concurrency))
                if mine and theirs:
                    entry[f"served_speedup_c{concurrency}"] = paired_median_ratio(
                        mine["requests_per_second_each"], theirs["requests_per_second_each"]
                    )
            if "served_speedup_c32" in entry:
                entry["survival_c32"] = entry["served_speedup_c32"] / entry["model_speedup_b32"]
        out["variants"][name] = entry
    for name, overhead in result["served"]["overhead"].items():
        single = at.get(("service", name, 1))
        if single:
            out["variants"][name]["overhead_c1_wrk_ms"] = single["p50_ms"] - overhead["inference_p50_ms"]
    for label in {r["server"] for r in runs if r["server"].startswith("api-servers=")}:
        for concurrency in concurrencies:
            mine, theirs = at.get((label, reference, concurrency)), at.get(("service", reference, concurrency))
            if mine and theirs:
                out.setdefault("api_servers_over_first", {}).setdefault(label, {})[str(concurrency)] = (
                    paired_median_ratio(mine["requests_per_second_each"], theirs["requests_per_second_each"])
                )
    new, old = at.get(("service", reference, 32)), at.get(("baseline", reference, 32))
    if new and old:
        out["full_c32_over_baseline"] = paired_median_ratio(
            new["requests_per_second_each"], old["requests_per_second_each"]
        )
    return out


def run(args: argparse.Namespace) -> dict:
    variants = parse_variants(args.variant)
    if args.reference not in variants:
        raise ValueError(f"--reference {args.reference!r} is not one of the variants {sorted(variants)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        bodies = load_bodies(args.data_root, args.images, folder)
        result = {
            "machine": machine_description(),
            "threads": torch.get_num_threads(),
            "images": len(bodies),
            "seconds_per_run": args.seconds,
            "repeats": args.repeats,
            "baseline_checkout": args.baseline_checkout,
            "baseline_commit": commit_of(args.baseline_checkout) if args.baseline_checkout else None,
            "reference": args.reference,
            "api_servers": api_server_counts(args.api_servers),
            "model_alone": model_alone(variants, bodies, args.model_seconds, args.repeats),
        }
        result["served"] = served(args, variants, folder, len(bodies))
    result["summary"] = summary(result)
    return result


def api_server_counts(text: str | None) -> list[int | None]:
    """``--api-servers 1,2``: the counts to serve with, the first one for every variant; None: the default."""
    if not text:
        return [None]
    counts = [int(part) for part in text.split(",")]
    if any(count < 1 for count in counts) or len(set(counts)) != len(counts):
        raise ValueError(f"--api-servers takes distinct counts of at least 1, got {text!r}")
    return counts


def to_markdown(result: dict) -> str:
    runs, reference = result["served"]["runs"], result.get("reference", "full")
    concurrencies = sorted({r["concurrency"] for r in runs})
    at = {(r["server"], r["variant"], r["concurrency"]): r for r in runs}
    lines = [
        f"{result['images']} CIFAR-10 test images; {result['machine']}. Model alone: `Variant.infer` (the served "
        f"model) on {result['threads']} threads; served: `blockdrop serve` with its defaults, wrk posting PNG "
        f"bodies, {result['seconds_per_run']} s per run; each figure the median of {result['repeats']} run(s), "
        "the variants taking turns. Efficiency: served req/s at c=32 over model-alone img/s at batch 32. "
        "The 1-thread column is the model at batch 32 on the one torch thread each worker process has by default "
        "(in brackets: over the figure on all threads), the most the served rate could reach if the HTTP side and "
        "the load generator took no CPU from the worker.",
        "",
        "| variant | model b=1 img/s | model b=32 img/s | model b=32, 1 thread | "
        + " | ".join(f"served c={c} req/s" for c in concurrencies)
        + " | efficiency | p50 / p99 at c=32 | non-2xx |",
        "|---|---:|---:|---:|" + "---:|" * len(concurrencies) + "---:|---:|---:|",
    ]
    for name, row in result["model_alone"].items():
        rates = [at.get(("service", name, c)) for c in concurrencies]
        c32 = at.get(("service", name, 32))
        efficiency = result["summary"]["variants"][name]["efficiency_c32"]
        non_2xx = sum(n for r in rates if r for status, n in r["statuses"].items() if not 200 <= int(status) < 300)
        lines.append(
            f"| {name} | {row['img_per_s']['1']:.0f} | {row['img_per_s']['32']:.0f} | "
            + (
                f"{one:.0f} ({one / row['img_per_s']['32']:.2f}) | "
                if (one := row.get("img_per_s_b32_one_thread"))
                else " | "
            )
            + " | ".join(f"{r['requests_per_second']:.0f}" if r else "" for r in rates)
            + (f" | {efficiency:.2f} | " if efficiency is not None else " | | ")
            + (f"{c32['p50_ms']:.1f} / {c32['p99_ms']:.1f} ms" if c32 else "")
            + f" | {non_2xx} |"
        )
    lines += [
        "",
        f"Speed-up over `{reference}` (medians of the ratios of runs taken in turn):",
        "",
        "| variant | FLOPs-ideal | model b=1 | model b=32 | served c=1 | served c=32 | survival at c=32 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in result["summary"]["variants"].items():
        if "flops_ideal" not in entry:
            continue
        single, served_ratio, survival = (
            entry.get(k) for k in ("served_speedup_c1", "served_speedup_c32", "survival_c32")
        )
        lines.append(
            f"| {name} | {entry['flops_ideal']:.2f}x | {entry['model_speedup_b1']:.2f}x "
            f"({entry['model_speedup_b1'] / entry['flops_ideal']:.2f} of ideal) | {entry['model_speedup_b32']:.2f}x "
            f"({entry['model_speedup_b32'] / entry['flops_ideal']:.2f} of ideal) | "
            + (f"{single:.2f}x | " if single else " | ")
            + (f"{served_ratio:.2f}x | {survival:.2f} |" if served_ratio else " | |")
        )
    lines += [
        "",
        "HTTP overhead at c=1: client latency minus the model's own time as the service reports it (`latency_ms."
        "inference`, timed around the model call in the worker, so the hand-over between processes counts as "
        "overhead); medians, with wrk (C) and with httpx (Python, whose own cost is in its figure):",
        "",
    ]
    for name, o in result["served"]["overhead"].items():
        single = at.get(("service", name, 1))
        by_wrk = f"{single['p50_ms'] - o['inference_p50_ms']:.2f} ms with wrk, " if single else ""
        lines.append(
            f"- {name}: {by_wrk}{o['overhead_p50_ms']:.2f} ms with httpx (an empty GET: "
            f"{o['empty_get_p50_ms']:.2f} ms), over {o['inference_p50_ms']:.2f} ms of inference"
        )
    lines += api_server_table(result, concurrencies, at)
    memory = result["served"]["memory_kib"]["service"]
    lines += [
        "",
        f"Memory of the service with these {len(result['model_alone'])} variants, its process and its inference "
        f"workers, after warm-up: {memory['pss_kib'] / 1024:.0f} MiB PSS (shared pages split between the processes; "
        f"{memory['rss_kib'] / 1024:.0f} MiB RSS counting them once per process).",
    ]
    for label, other in result["served"]["memory_kib"].items():
        if label.startswith("api-servers="):
            lines[-1] += (
                f" With {label.removeprefix('api-servers=')} API servers (supervisor, API servers, model servers): "
                f"{other['pss_kib'] / 1024:.0f} MiB PSS, {other['rss_kib'] / 1024:.0f} MiB RSS."
            )
    if "full_c32_over_baseline" in result["summary"]:
        old = at[("baseline", reference, 32)]["requests_per_second"]
        new = at[("service", reference, 32)]["requests_per_second"]
        lines += [
            "",
            f"`{reference}` at c=32 against the service of `{result['baseline_checkout']}` (commit "
            f"{result.get('baseline_commit') or 'unknown'}) served in the same run: {new:.0f} against "
            f"{old:.0f} req/s, {result['summary']['full_c32_over_baseline']:.2f}x.",
        ]
    return "\n".join(lines) + "\n"


def _non_2xx(row: dict) -> int:
    return sum(n for status, n in row["statuses"].items() if not 200 <= int(status) < 300)


def api_server_table(result: dict, concurrencies: list[int], at: dict) -> list[str]:
    """The reference variant served with each API server count: req/s, latency and CPU per request by kind."""
    reference, counts = result.get("reference", "full"), result.get("api_servers") or [None]
    labels = ["service", *(f"api-servers={count}" for count in counts[1:])]
    ratios = result["summary"].get("api_servers_over_first", {})
    lines = [
        "",
        f"`{reference}` by API server count (`--api-servers {','.join(str(c) for c in counts if c)}`; "
        "the first count also serves every row above). CPU per request: CPU time of the service's processes of "
        "each kind during the run over the requests answered (API servers: HTTP, decoding, routing, answering; "
        "model workers: the model, and with several API servers the batching; supervisor: with several only):",
        "",
        "| API servers | concurrency | req/s | over the first | p50 / p99 | non-2xx | CPU ms/request: API servers | "
        "model workers | supervisor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, count in zip(labels, counts):
        for concurrency in concurrencies:
            row = at.get((label, reference, concurrency))
            if row is None:
                continue
            cpu = row.get("cpu_ms_per_request", {})
            ratio = ratios.get(label, {}).get(str(concurrency))
            lines.append(
                f"| {count or 'default'} | {concurrency} | {row['requests_per_second']:.0f} | "
                + (f"{ratio:.2f}x | " if ratio else "1 | " if label == "service" else " | ")
                + f"{row['p50_ms']:.1f} / {row['p99_ms']:.1f} ms | {_non_2xx(row)} | "
                + " | ".join(f"{cpu[k]:.2f}" if k in cpu else "" for k in ("api_server", "model_worker", "supervisor"))
                + " |"
            )
    return lines + scaling_prediction(result, concurrencies, at)


def scaling_prediction(result: dict, concurrencies: list[int], at: dict) -> list[str]:
    """What the CPU per request measured with the most API servers predicts for a machine with more cores: each API
    server is one event loop (a core at most), each model server of the reference variant a core at its one torch
    thread. Labelled as a prediction: nothing here was run on such a machine."""
    reference, counts = result.get("reference", "full"), result.get("api_servers") or [None]
    if len(counts) < 2:
        return []
    most = max(count for count in counts if count)
    label = "service" if counts[0] == most else f"api-servers={most}"
    # the busiest run in which every answer was a 200 (cheap 503s under overload would flatter the CPU per request)
    clean = [c for c in concurrencies if (row := at.get((label, reference, c))) and not _non_2xx(row)]
    if not clean:
        return []
    concurrency = max(clean)
    row = at[(label, reference, concurrency)]
    cpu = row.get("cpu_ms_per_request")
    if not cpu or not cpu.get("api_server") or not cpu.get("model_worker"):
        return []
    # every request is answered by one API server: the API servers' CPU over all requests is one server's cost
    api, model = 1000 / cpu["api_server"], 1000 / cpu["model_worker"]
    replicas = (1, 2, 4, 8)
    lines = [
        "",
        f"Prediction, not a measurement: at c={concurrency} with {most} API servers, a request cost its API "
        f"server {cpu['api_server']:.2f} ms of CPU and the `{reference}` model server {cpu['model_worker']:.2f} ms. "
        f"On a machine with a core for each process, N API servers and W model servers (`WORKER_REPLICAS`) would "
        f"answer about min(N × {api:.0f}, W × {model:.0f}) req/s of `{reference}`, at the batch sizes seen here "
        "(on a GPU the model servers' side is many times larger):",
        "",
        "| API servers | " + " | ".join(f"W={w}" for w in replicas) + " |",
        "|---:|" + "---:|" * len(replicas),
    ]
    for n in (1, 2, 4, 8):
        lines.append(f"| {n} | " + " | ".join(f"{min(n * api, w * model):.0f}" for w in replicas) + " |")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root", help="folder holding cifar-10-batches-py (default: the sample images in service/samples)"
    )
    parser.add_argument("--images", type=int, default=256, help="distinct test images (with --data-root)")
    parser.add_argument("--concurrency", default="1,8,32,64", help="comma-separated wrk connection counts")
    parser.add_argument("--seconds", type=int, default=8, help="duration of each wrk run")
    parser.add_argument("--model-seconds", type=float, default=2.0, help="duration of each model-alone figure")
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="runs per figure, the variants taking turns (medians)"
    )
    parser.add_argument("--threads", type=int, help="torch threads for the model-alone figures (default: all cores)")
    parser.add_argument("--warmup-seconds", type=int, default=2, help="untimed wrk run against each URL first")
    parser.add_argument("--overhead-requests", type=int, default=300, help="sequential requests at c=1")
    add_variant_option(parser, "serve and measure this artifact (repeatable); default: the default variants")
    parser.add_argument(
        "--reference", default="full", help="the variant the speed-ups are taken over (and the baseline checkout runs)"
    )
    parser.add_argument(
        "--baseline-checkout", metavar="DIR", help="another checkout whose service is measured beside this one"
    )
    parser.add_argument(
        "--api-servers",
        metavar="N[,N...]",
        help="API server processes to serve with (default: the service's own default); with several counts, the "
        "reference variant is served with each in turn, and the ratios to the first count are reported",
    )
    parser.add_argument("--out", default=str(RESULTS), help="folder for efficiency.json and efficiency.md")


def execute(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise ValueError("wrk is not installed (Debian: apt-get install wrk)")
    result = run(args)
    write_results(args.out, "efficiency", result, to_markdown(result))
    return 0

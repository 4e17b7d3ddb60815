"""What each protocol costs the service per request: the same CIFAR-10 images sent as v1 PNG bodies, v2 JSON
tensors, v2 binary tensors and v2 gRPC to one variant, in turns; requests/s, p50 / p99 and the CPU time of the
service's processes (its own and its inference worker's) per answered request.

The HTTP protocols are loaded with ``wrk`` (C); there is no ``wrk`` for gRPC, so gRPC is loaded from threads of
this Python process with the generated stubs, which costs the client more CPU than ``wrk`` does: compare the
service CPU per request across protocols, and requests/s among the HTTP ones. Results go to
``bench/results/protocols.{json,md}``:

    blockdrop bench protocols --data-root DIR
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import RESULTS, machine_description, positive_int, process_tree, write_results
from bench.efficiency import load_bodies
from bench.load import Process, free_port, run_wrk
from bench.variants import add_variant_option, parse_variants
from service.cluster import processes

ROOT = Path(__file__).resolve().parent.parent
PROTOCOLS = ("v1 PNG", "v2 JSON", "v2 binary", "v2 gRPC")


def service_cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of ``pid`` and the processes below it."""
    return sum(found.cpu_seconds for member in process_tree(pid) if (found := processes.status(member)))


def write_protocol_bodies(pngs: list[bytes], folder: Path) -> dict[str, dict[str, str]]:
    """Per HTTP protocol: a folder of bodies ``image_I.png`` made from the same images, and the wrk settings."""
    pixels = [np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in pngs]
    settings = {}
    for protocol in ("v1 PNG", "v2 JSON", "v2 binary"):
        target = folder / protocol.replace(" ", "-")
        target.mkdir()
        extra = {}
        for i, (png, image) in enumerate(zip(pngs, pixels)):
            tensor = {"name": "pixels", "datatype": "UINT8", "shape": [1, *image.shape]}
            if protocol == "v1 PNG":
                body = png
            elif protocol == "v2 JSON":
                body = json.dumps({"inputs": [tensor | {"data": image.flatten().tolist()}]}).encode()
                extra = {"WRK_CONTENT_TYPE": "application/json"}
            else:
                header = json.dumps(
                    {
                        "inputs": [tensor | {"parameters": {"binary_data_size": image.nbytes}}],
                        "parameters": {"binary_data_output": True},
                    }
                ).encode()
                body = header + image.tobytes()
                extra = {
                    "WRK_CONTENT_TYPE": "application/octet-stream",
                    "WRK_HEADER_NAME": "Inference-Header-Content-Length",
                    "WRK_HEADER_VALUE": str(len(header)),  # the same for every image: same shape, no data
                }
            (target / f"image_{i}.png").write_bytes(body)
        settings[protocol] = {"folder": str(target), **extra}
    return settings


def grpc_load(target: str, model: str, images: list[np.ndarray], concurrency: int, seconds: float) -> dict:
    """``concurrency`` threads calling ModelInfer in a loop for ``seconds``, the images in turn."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    requests = []
    for image in images:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="pixels", datatype="UINT8", shape=[1, *image.shape])
        request.raw_input_contents.append(image.tobytes())
        requests.append(request)
    latencies: list[float] = []
    codes: dict[str, int] = {}
    lock = threading.Lock()
    channel = grpc.insecure_channel(target)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    stop_at = time.monotonic() + seconds

    def client(offset: int) -> None:
        i = offset
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                stub.ModelInfer(requests[i % len(requests)], timeout=10)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            with lock:
                latencies.append(time.perf_counter() - started)
                codes[code] = codes.get(code, 0) + 1
            i += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    channel.close()
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "requests_per_second": len(ordered) / elapsed,
        "p50_ms": ordered[len(ordered) // 2] * 1e3 if ordered else None,
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3 if ordered else None,
        "statuses": codes,
    }


def run(args: argparse.Namespace) -> dict:
    variants = parse_variants(args.variant or ["full=models/checkpoints/cifar10-resnet32-e200:full"])
    model = next(iter(variants))
    port, grpc_port = free_port(), free_port()
    served = [v.model_dump(mode="json", exclude_defaults=True) for v in variants.values()]
    env = {
        "BLOCKDROP_PORT": str(port),
        "BLOCKDROP_GRPC_PORT": str(grpc_port),
        "BLOCKDROP_VARIANTS": json.dumps(served),
        "BLOCKDROP_QUEUE_LIMIT": "1024",
        "BLOCKDROP_LOG_LEVEL": "warning",
    }
    server = Process([sys.executable, "-m", "cli.main", "serve"], env, port, "/healthz/ready")
    rows: dict[str, list[dict]] = {protocol: [] for protocol in PROTOCOLS}
    try:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            (folder / "png").mkdir()
            pngs = load_bodies(args.data_root, args.images, folder / "png")
            pixels = [np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in pngs]
            bodies = write_protocol_bodies(pngs, folder)
            urls = {"v1 PNG": f"{server.url}/v1/classify?variant={model}"}
            urls |= {p: f"{server.url}/v2/models/{model}/infer" for p in ("v2 JSON", "v2 binary")}
            for protocol, url in urls.items():  # warm-up, and a check that each protocol is answered
                settings = dict(bodies[protocol])
                warm = run_wrk(url, 4, 1, Path(settings.pop("folder")), len(pngs), settings)
                if set(warm["statuses"]) != {200}:
                    raise RuntimeError(f"{protocol}: the warm-up got {warm['statuses']}")
            for _ in range(args.repeats):
                for protocol in PROTOCOLS:
                    before = service_cpu_seconds(server.process.pid)
                    if protocol == "v2 gRPC":
                        sample = grpc_load(f"127.0.0.1:{grpc_port}", model, pixels, args.concurrency, args.seconds)
                    else:
                        settings = dict(bodies[protocol])
                        sample = run_wrk(
                            urls[protocol],
                            args.concurrency,
                            args.seconds,
                            Path(settings.pop("folder")),
                            len(pngs),
                            settings,
                        )
                    cpu = service_cpu_seconds(server.process.pid) - before
                    answered = sample["statuses"].get(200, 0) + sample["statuses"].get("OK", 0)
                    sample["service_cpu_ms_per_request"] = cpu / max(answered, 1) * 1e3
                    rows[protocol].append(sample)
                    print(protocol, json.dumps({k: v for k, v in sample.items() if k != "statuses"}), flush=True)
    finally:
        server.stop()
    summary = {
        protocol: {
            key: statistics.median(s[key] for s in samples)
            for key in ("requests_per_second", "p50_ms", "p99_ms", "service_cpu_ms_per_request")
        }
        | {"statuses": [s["statuses"] for s in samples]}
        for protocol, samples in rows.items()
    }
    return {
        "machine": machine_description(),
        "variant": model,
        "concurrency": args.concurrency,
        "seconds_per_run": args.seconds,
        "repeats": args.repeats,
        "images": len(pngs),
        "runs": rows,
        "summary": summary,
    }


def to_markdown(result: dict) -> str:
    lines = [
        f"{result['images']} CIFAR-10 test images sent to the variant `{result['variant']}` in each protocol, "
        f"{result['concurrency']} concurrent clients, {result['seconds_per_run']} s per run, medians of "
        f"{result['repeats']} runs taken in turn; {result['machine']}. HTTP loaded by wrk, gRPC by threads of a "
        "Python client beside the service (more client CPU on the same cores: compare its service CPU per request, "
        "not its requests/s). Service CPU: user + system time of the service's process and its worker per answer.",
        "",
        "| protocol | requests/s | p50 | p99 | service CPU per request | answers |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for protocol, row in result["summary"].items():
        lines.append(
            f"| {protocol} | {row['requests_per_second']:.0f} | {row['p50_ms']:.1f} ms | {row['p99_ms']:.1f} ms | "
            f"{row['service_cpu_ms_per_request']:.2f} ms | {row['statuses']} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root", help="folder holding cifar-10-batches-py (default: the sample images in service/samples)"
    )
    parser.add_argument("--images", type=int, default=64, help="distinct test images (with --data-root)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    parser.add_argument("--seconds", type=int, default=6, help="duration of each run")
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs per protocol, taken in turn")
    add_variant_option(parser, "the one variant to serve (default: full, the 200-epoch ResNet-32)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for protocols.json and protocols.md")


def execute(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise ValueError("wrk is not installed (Debian: apt-get install wrk)")
    result = run(args)
    write_results(args.out, "protocols", result, to_markdown(result))
    return 0

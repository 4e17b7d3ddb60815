"""The real server process on a free loopback port, driven with httpx and tritonclient."""

from __future__ import annotations

import base64
import concurrent.futures
import signal
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from models.artifacts import InputSpec
from tests.service.conftest import MEAN, STD, png_bytes
from tests.service.live_server import Server


@pytest.fixture(scope="module")
def server(served_variants):
    running = Server(served_variants)
    yield running
    assert running.stop()


def test_httpx_classify_and_metrics(server):
    response = httpx.post(
        f"{server.url}/v1/classify", content=png_bytes(), headers={"content-type": "image/png", "x-client-id": "alice"}
    )
    assert response.status_code == 200 and response.json()["variant"] in {"blockdrop", "full"}
    assert "blockdrop_images_total" in httpx.get(f"{server.url}/metrics").text
    assert httpx.get(f"{server.url}/docs").status_code == 200
    assert "/v1/classify" in httpx.get(f"{server.url}/openapi.json").json()["paths"]


def test_tritonclient_json_mode(server):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("blockdrop")
    assert client.get_model_metadata("blockdrop")["outputs"][1]["name"] == "keep_mask"
    pixels = np.stack([np.asarray(Image.open(__import__("io").BytesIO(png_bytes(seed=s)))) for s in (1, 2)])
    images = triton.InferInput("images", list(pixels.shape), "UINT8")
    images.set_data_from_numpy(pixels, binary_data=False)
    outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in ("logits", "keep_mask", "flops")]
    result = client.infer("blockdrop", [images], outputs=outputs)
    logits, mask, flops = result.as_numpy("logits"), result.as_numpy("keep_mask"), result.as_numpy("flops")
    assert logits.shape == (2, 10) and mask.shape == (2, 3) and mask.dtype == bool and flops.shape == (2,)
    v1 = httpx.post(
        f"{server.url}/v1/classify?variant=blockdrop", content=png_bytes(seed=1), headers={"content-type": "image/png"}
    ).json()
    assert int(logits[0].argmax()) == v1["prediction"]["class_id"] and int(flops[0]) == v1["flops"]["executed"]


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_tritonclient_defaults_binary_tensors_both_ways(server, datatype):
    """What tritonclient sends by default: binary input tensors, every output asked for as binary."""
    import tritonclient.http as triton

    from service.imaging import ImagePreprocessor

    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    bodies = [png_bytes(seed=s) for s in (1, 2, 3)]
    if datatype == "UINT8":
        tensor = np.stack([np.asarray(Image.open(__import__("io").BytesIO(b))) for b in bodies])
    else:
        spec = InputSpec(32, 32, None, MEAN, STD)
        tensor = np.stack([ImagePreprocessor(spec, 10**6)(b).numpy() for b in bodies]).astype(np.float32)
    images = triton.InferInput("images", list(tensor.shape), datatype)
    images.set_data_from_numpy(tensor)  # binary_data=True, the client's default
    binary = client.infer("blockdrop", [images])  # no outputs named: all of them, as binary
    json_images = triton.InferInput("images", list(tensor.shape), datatype)
    json_images.set_data_from_numpy(tensor, binary_data=False)
    outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in ("logits", "keep_mask", "flops")]
    as_json = client.infer("blockdrop", [json_images], outputs=outputs)
    assert np.allclose(binary.as_numpy("logits"), as_json.as_numpy("logits"), atol=1e-5)
    assert np.array_equal(binary.as_numpy("keep_mask"), as_json.as_numpy("keep_mask"))
    assert np.array_equal(binary.as_numpy("flops"), as_json.as_numpy("flops"))
    for i, body in enumerate(bodies):
        v1 = httpx.post(
            f"{server.url}/v1/classify?variant=blockdrop", content=body, headers={"content-type": "image/png"}
        ).json()
        assert int(binary.as_numpy("logits")[i].argmax()) == v1["prediction"]["class_id"]
        assert "".join("1" if k else "0" for k in binary.as_numpy("keep_mask")[i]) == v1["blocks"]["mask"]
        assert int(binary.as_numpy("flops")[i]) == v1["flops"]["executed"]


def test_sticky_assignment_survives_a_restart(served_variants):
    keys = [f"user-{i}" for i in range(40)]

    def assignments(server: Server) -> list[str]:
        with httpx.Client(base_url=server.url) as client:
            return [
                client.post(
                    "/v1/classify", content=png_bytes(), headers={"content-type": "image/png", "x-client-id": key}
                ).json()["variant"]
                for key in keys
            ]

    first = Server(served_variants)
    before = assignments(first)
    assert first.stop()
    second = Server(served_variants)
    after = assignments(second)
    assert second.stop()
    assert before == after and set(before) == {"blockdrop", "full"}


def test_overload_gives_503s_not_500s_and_the_service_recovers(served_variants):
    server = Server(served_variants, queue_limit=2, max_images_per_request=2, max_batch_size=1)
    try:

        def hit(_):
            try:
                return httpx.post(
                    f"{server.url}/v1/classify?variant=slow",
                    content=png_bytes(),
                    headers={"content-type": "image/png"},
                    timeout=30,
                )
            except httpx.HTTPError as error:
                return error

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            responses = list(pool.map(hit, range(96)))
        statuses = [r.status_code for r in responses if isinstance(r, httpx.Response)]
        assert len(statuses) == 96, [r for r in responses if not isinstance(r, httpx.Response)]
        assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "overloaded" in refused.json()["error"]
        assert httpx.get(f"{server.url}/healthz/ready").status_code == 200
        again = httpx.post(
            f"{server.url}/v1/classify?variant=full", content=png_bytes(seed=7), headers={"content-type": "image/png"}
        )
        assert again.status_code == 200
    finally:
        assert server.stop()


def test_graceful_shutdown_completes_requests_in_flight(served_variants):
    # 128 images of a slow model queue for far longer than the 250 ms queue-wait budget: this test is about the drain
    server = Server(served_variants, max_batch_size=4, queue_wait_budget_ms=60_000)
    batch = {"images": [base64.b64encode(png_bytes(seed=s)).decode() for s in range(32)]}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(httpx.post, f"{server.url}/v1/classify?variant=slow", json=batch, timeout=60) for _ in range(4)
        ]
        deadline = time.monotonic() + 30
        while 'blockdrop_images_total{variant="slow"} 0.0' in httpx.get(f"{server.url}/metrics").text:
            assert time.monotonic() < deadline, "the requests never started"
            time.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)  # while the four requests are being served
        responses = [future.result() for future in futures]
    assert server.exited_cleanly()
    # requests already routed complete in full; one that arrived after the signal may get 503 instead
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 503 and "shutting down" in r.json()["error"]]
    assert served and len(served) + len(refused) == 4, [(r.status_code, r.text[:200]) for r in responses]
    assert all(len(r.json()["results"]) == 32 for r in served)


def test_the_server_parses_http_with_httptools_on_asyncios_loop():
    """The pinned httptools (uvicorn would silently fall back to the pure-Python h11 without it), and asyncio's
    loop even where uvloop is installed (uvloop starved some connections under overload)."""
    import asyncio

    from service.config import Settings
    from service.server import uvicorn_config

    config = uvicorn_config(app=lambda scope, receive, send: None, settings=Settings())
    config.load()
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert issubclass(config.http_protocol_class, HttpToolsProtocol)
    loop = config.get_loop_factory()()
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()
    assert isinstance(loop, asyncio.AbstractEventLoop)

"""The pure-ASGI path for raw-image ``POST /v1/classify`` answers exactly as the FastAPI route does: the same
status, headers that matter, and JSON bytes (request ids and timings aside), for answers and refusals alike;
what it does not parse plainly goes to the FastAPI route."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from bench.common import metric_samples
from service.api.errors import encode_json
from service.api.fast_classify import FastClassify, parse_query
from service.app import create_app
from tests.service.conftest import make_settings, png_bytes

PNG = {"content-type": "image/png"}
# the figures that differ from call to call; everything else must be byte-identical
VOLATILE = re.compile(rb'"request_id":"[0-9a-f]{32}"|"latency_ms":\{[^}]*\}')


@pytest.fixture(scope="module")
def clients(artifacts):
    with (
        TestClient(create_app(make_settings(artifacts, max_body_bytes=50_000))) as fast,
        TestClient(create_app(make_settings(artifacts, max_body_bytes=50_000, fast_path=False))) as plain,
    ):
        yield fast, plain


REQUESTS = [
    ("/v1/classify", png_bytes(seed=1), PNG),
    ("/v1/classify?top_k=3", png_bytes(seed=2), PNG),
    ("/v1/classify?variant=full&top_k=10", png_bytes(seed=3), {}),
    ("/v1/classify", png_bytes(seed=4), {"content-type": "application/octet-stream", "x-variant": "full"}),
    ("/v1/classify", png_bytes(seed=5), PNG | {"x-client-id": "alice"}),
    ("/v1/classify?top_k=11", png_bytes(seed=6), PNG),  # over max_top_k: 422 from the data plane
    ("/v1/classify?variant=nope", png_bytes(seed=7), PNG),  # 404
    ("/v1/classify", b"not an image", PNG),  # 400
    ("/v1/classify", b"", PNG),  # 400
    ("/v1/classify", b"x" * 60_000, PNG),  # 413 from Content-Length
    ("/v1/classify?top_k=0", png_bytes(seed=8), PNG),  # FastAPI's own query validation (422)
    ("/v1/classify?top_k=two", png_bytes(seed=8), PNG),
    ("/v1/classify?other=1", png_bytes(seed=9), PNG),
    ("/v1/classify", png_bytes(seed=9), {"content-type": "text/plain"}),  # 415
]


@pytest.mark.parametrize(("path", "body", "headers"), REQUESTS)
def test_the_fast_path_answers_byte_for_byte_as_fastapi(clients, path, body, headers):
    headers = {"x-client-id": "bob"} | headers  # the same sticky variant on both apps
    fast, plain = (client.post(path, content=body, headers=headers) for client in clients)
    assert fast.status_code == plain.status_code
    assert VOLATILE.sub(b"", fast.content) == VOLATILE.sub(b"", plain.content)
    compared = ("content-type",) if fast.status_code == 200 else ("content-type", "content-length")
    for header in (*compared, "retry-after"):  # a 200's length moves with the digits of its timings
        assert fast.headers.get(header) == plain.headers.get(header)
    if fast.status_code == 200:
        assert json.loads(fast.content)["request_id"] != json.loads(plain.content)["request_id"]


def test_refusals_and_answers_are_counted_alike(clients):
    for client in clients:
        client.post("/v1/classify?variant=full", content=png_bytes(seed=1), headers=PNG)
        client.post("/v1/classify?variant=nope", content=png_bytes(seed=1), headers=PNG)
    fast, plain = (_request_counts(client.get("/metrics").text) for client in clients)
    assert fast == plain and fast[("full", "200")] >= 1 and fast[("none", "404")] >= 1


def _request_counts(metrics: str) -> dict[tuple[str, str], float]:
    """``blockdrop_requests_total`` per (variant, status)."""
    samples = metric_samples(metrics, "blockdrop_requests_total")
    return {(labels["variant"], labels["status"]): value for labels, value in samples}


def test_only_plain_queries_are_taken():
    assert parse_query(b"") == {} and parse_query(b"variant=full&top_k=3") == {"variant": "full", "top_k": "3"}
    for query in (b"top_k=0", b"top_k=-1", b"top_k=3.0", b"top_k=%C2%B3", b"top_k=1&top_k=2", b"x=1"):
        assert parse_query(query) is None, query


def test_the_json_is_what_fastapi_writes():
    from fastapi.responses import JSONResponse

    content = {"a": "é", "b": [1, 2.5], "c": {"d": None}}
    assert encode_json(content) == JSONResponse(content).body


def test_a_client_gone_mid_body_is_not_an_error_of_the_service(artifacts):
    import asyncio

    from service.metrics import ServiceMetrics

    sent = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": [], "query_string": b""}
    asyncio.run(FastClassify(None, lambda: None, ServiceMetrics(), 1000)(scope, receive, send))
    assert sent[0]["status"] == 400

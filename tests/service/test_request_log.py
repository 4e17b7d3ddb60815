"""Request ids and the structured request log: an id per request, taken from the client or made, echoed on every
HTTP answer and as gRPC metadata; one JSON line per inference request with what it ran, the client key hashed."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from service.config import Settings
from service.request_log import JsonFormatter, hashed, request_id_from
from tests.service.conftest import png_bytes

PNG = {"content-type": "image/png"}


def _lines(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "blockdrop.requests"]


@pytest.mark.parametrize("fast", [True, False])
def test_a_classification_logs_one_line_with_what_it_ran(artifacts, caplog, fast):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.service.conftest import make_settings

    caplog.set_level(logging.INFO, logger="blockdrop.requests")
    with TestClient(create_app(make_settings(artifacts, fast_path=fast))) as client:
        headers = PNG | {"x-request-id": "order-42", "x-client-id": "alice"}
        response = client.post("/v1/classify?variant=blockdrop", content=png_bytes(seed=3), headers=headers)
        body = response.json()
        assert response.headers["x-request-id"] == "order-42"
        (line,) = _lines(caplog)
        assert line["request_id"] == "order-42" and line["status"] == 200 and line["protocol"] == "http"
        assert line["variant"] == "blockdrop" and line["images"] == 1
        assert line["blocks_used"] == body["blocks"]["used"] and line["flops"] == body["flops"]["executed"]
        assert line["client"] == hashlib.sha256(b"alice").hexdigest()[:16] and "alice" not in json.dumps(line)
        caplog.clear()
        refused = client.post("/v1/classify?variant=nope", content=png_bytes(seed=3), headers=PNG)
        (line,) = _lines(caplog)
        assert refused.status_code == 404 and line["status"] == 404 and line["variant"] is None
        assert line["request_id"] == refused.headers["x-request-id"] and len(line["request_id"]) == 32
        caplog.clear()
        no_image = client.post("/v1/classify?variant=blockdrop", content=b"not an image", headers=PNG)
        (line,) = _lines(caplog)  # refused on the variant chosen: the line names it, as the metrics count it
        assert no_image.status_code == 415 and line["variant"] == "blockdrop" and line["images"] == 0


def test_v2_and_batches_log_their_images_and_other_routes_only_echo_the_id(client, caplog):
    import base64

    caplog.set_level(logging.INFO, logger="blockdrop.requests")
    batch = {"images": [base64.b64encode(png_bytes(seed=s)).decode() for s in range(3)]}
    answer = client.post("/v1/classify?variant=full", json=batch).json()
    assert _lines(caplog)[-1]["images"] == 3
    assert _lines(caplog)[-1]["flops"] == sum(r["flops"]["executed"] for r in answer["results"])
    pixels = list(bytes(3072))
    tensor = {"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": pixels}
    client.post("/v2/models/full/infer", json={"inputs": [tensor]}, headers={"x-request-id": "v2-1"})
    assert _lines(caplog)[-1]["request_id"] == "v2-1" and _lines(caplog)[-1]["variant"] == "full"
    logged = len(_lines(caplog))
    assert client.get("/healthz/live", headers={"x-request-id": "probe"}).headers["x-request-id"] == "probe"
    assert len(_lines(caplog)) == logged  # not an inference request: no line


def test_only_plain_request_ids_are_taken():
    assert request_id_from("abc-123_x.y:z") == "abc-123_x.y:z"
    for offered in (None, "", "has space", "x" * 129, "new\nline", "é"):
        made = request_id_from(offered)
        assert made != offered and len(made) == 32
    assert hashed("alice") == hashed("alice") != hashed("bob") and hashed(None) is None


def test_json_lines_and_no_access_log_by_default():
    from service.server import uvicorn_config

    record = logging.LogRecord("blockdrop.requests", logging.INFO, __file__, 1, "inference %s", ({},), None)
    record.fields = {"request_id": "r", "status": 200}
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "r" and line["level"] == "info" and "message" not in line
    plain = logging.LogRecord("x", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    assert json.loads(JsonFormatter().format(plain))["message"] == "hello world"
    config = uvicorn_config(app=lambda scope, receive, send: None, settings=Settings())
    assert config.access_log is False and config.log_config is None


def test_every_answer_says_which_process_served_it(artifacts, monkeypatch):
    """``X-Served-By``: ``BLOCKDROP_API_SERVER_NAME`` (``api-0`` unset) as it is when the app is made, and the pid; on
    the fast path, the FastAPI routes, their refusals, the body limit's 413 and the 500 of an unexpected error."""
    import os

    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.service.conftest import make_settings

    monkeypatch.delenv("BLOCKDROP_API_SERVER_NAME", raising=False)
    unnamed = create_app(make_settings(artifacts, max_body_bytes=50_000))
    monkeypatch.setenv("BLOCKDROP_API_SERVER_NAME", "api-3")
    named = create_app(make_settings(artifacts, max_body_bytes=50_000))
    monkeypatch.delenv("BLOCKDROP_API_SERVER_NAME")
    tensor = {"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}
    for app, name in ((unnamed, "api-0"), (named, "api-3")):
        with TestClient(app, raise_server_exceptions=False) as client:
            answers = [
                client.post("/v1/classify", content=png_bytes(seed=1), headers=PNG),  # the fast path
                client.post("/v1/classify?variant=nope", content=png_bytes(seed=1), headers=PNG),
                client.get("/v1/models"),
                client.post("/v2/models/full/infer", json={"inputs": [tensor]}),
                client.post("/v2/models/nope/infer", json={"inputs": [tensor]}),
                client.post("/v1/classify", json={"images": ["x" * 60_000]}),  # the body limit's 413
            ]
            with monkeypatch.context() as patch:
                patch.setattr(app.state.plane, "models", lambda: 1 / 0)  # an unexpected error: a 500
                answers.append(client.get("/v1/models"))
        assert [answer.status_code for answer in answers] == [200, 404, 200, 200, 404, 413, 500]
        assert {answer.headers["x-served-by"] for answer in answers} == {f"{name}/{os.getpid()}"}
        assert all(len(answer.headers.get_list("x-served-by")) == 1 for answer in answers)
        assert answers[-1].headers["x-request-id"]  # the 500 is sent outside the middleware: it gets the id too

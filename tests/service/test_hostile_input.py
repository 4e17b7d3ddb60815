"""Hostile input answered as a client error, never a 500, and never by building what the request asks for before it
is checked: deep nesting, huge integers, non-finite admin values, booleans posing as labels, tensors far larger
than their shape."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.conftest import png_bytes

PNG = {"content-type": "image/png"}


def _error(response) -> str:
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["error"]


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_a_json_batch_nested_deep_is_a_422(client, depth):
    body = b"[" * depth + b"]" * depth
    response = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "JSON" in _error(response)


@pytest.mark.parametrize("route", ["/v1/feedback", "/v2/models/blockdrop/infer"])
def test_deep_nesting_on_the_other_json_routes_is_a_client_error(client, route):
    body = b'{"request_id": "x", "label": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    response = client.post(route, content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500


def test_a_huge_header_length_is_a_400_not_a_500(client):
    response = client.post(
        "/v2/models/blockdrop/infer",
        content=b"{}",
        headers={"inference-header-content-length": "9" * 5000},
    )
    assert response.status_code == 400
    assert "Inference-Header-Content-Length" in _error(response)


@pytest.mark.parametrize("top_k", ["9" * 5000, "1" + "0" * 30])
def test_a_huge_top_k_on_the_raw_image_path_is_a_422(client, top_k):
    response = client.post(f"/v1/classify?top_k={top_k}", content=png_bytes(), headers=PNG)
    assert response.status_code == 422
    assert "top_k" in _error(response)


def test_a_huge_content_length_is_refused_as_too_large(client):
    # the size limit compares the number it reads; 5,000 digits must not make that comparison raise
    for path, headers in [("/v1/classify", PNG), ("/v1/feedback", {"content-type": "application/json"})]:
        response = client.post(path, content=b"x", headers=headers | {"content-length": "9" * 5000})
        assert response.status_code in (400, 413)


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        ("/v1/classify", "image/png", png_bytes()),  # the raw-image fast path
        ("/v1/classify", "application/json", json.dumps({"images": []}).encode()),
        ("/v1/explain?variant=blockdrop", "image/png", png_bytes()),
        ("/v2/models/blockdrop/infer", "application/json", b"{}"),
        ("/v1/feedback", "application/json", b"{}"),
    ],
)
@pytest.mark.parametrize("coding", ["gzip", "br, gzip", "GZIP"])
def test_a_body_in_a_content_coding_is_a_415_that_says_so(client, path, content_type, body, coding):
    """Read as it is, a gzipped image was answered "not an image": now the coding is named, and the answer says
    which coding is taken. The body here is not even compressed: the header alone decides."""
    response = client.post(path, content=body, headers={"content-type": content_type, "content-encoding": coding})
    assert response.status_code == 415
    assert "Content-Encoding" in _error(response) and "uncompressed" in _error(response)
    assert response.headers["accept-encoding"] == "identity" and "x-request-id" in response.headers


@pytest.mark.parametrize(
    "path",
    [
        "/v1/classify?variant=full&variant=slim",
        "/v1/classify?budget=0.6&budget=0.9&variant=blockdrop",
        "/v1/classify?top_k=1&top_k=3",
        "/v1/explain?variant=blockdrop&variant=full",
    ],
)
def test_a_query_field_given_twice_is_a_422_not_a_guess(client, path):
    """The framework kept the last value: a request pinned to two variants ran on one of them, unsaid."""
    response = client.post(path, content=png_bytes(), headers=PNG)
    assert response.status_code == 422 and "give it once" in _error(response)


@pytest.mark.parametrize("header", ["x-variant", "x-client-id", "x-compute-budget"])
def test_a_routing_header_given_twice_is_a_422_on_v1_and_v2(client, header):
    values = {"x-variant": ("full", "blockdrop"), "x-client-id": ("a", "b"), "x-compute-budget": ("0.9", "fast")}
    repeated = [(header, value) for value in values[header]]
    raw = client.post("/v1/classify", content=png_bytes(), headers=[("content-type", "image/png"), *repeated])
    tensor = {"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}
    v2 = client.post("/v2/models/default/infer", json={"inputs": [tensor]}, headers=repeated)
    for response in (raw, v2):
        assert response.status_code == 422 and "give it once" in _error(response)


def test_an_identity_content_coding_is_taken(client):
    response = client.post("/v1/classify", content=png_bytes(), headers=PNG | {"content-encoding": "identity"})
    assert response.status_code == 200


@pytest.mark.parametrize("weight", ["1e400", "-1e400", "NaN", "Infinity"])
def test_an_admin_weight_must_be_a_finite_number(artifacts, weight):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.service.conftest import make_settings

    with TestClient(create_app(make_settings(artifacts, admin_token="secret"))) as client:
        auth = {"authorization": "Bearer secret", "content-type": "application/json"}
        response = client.put("/v1/variants/full", content=f'{{"weight": {weight}}}', headers=auth)
        assert response.status_code == 422, response.text
        assert client.get("/v1/variants/full").json()["weight"] == 1.0


@pytest.mark.parametrize("label", [True, False, 1.0, [1], {"id": 1}])
def test_feedback_takes_a_class_id_or_name_only(client, label):
    request_id = client.post("/v1/classify?variant=full", content=png_bytes(), headers=PNG).json()["request_id"]
    response = client.post("/v1/feedback", json={"request_id": request_id, "label": label})
    assert response.status_code == 422, response.text
    # the prediction still awaits its (valid) feedback
    assert client.post("/v1/feedback", json={"request_id": request_id, "label": 3}).status_code == 200


def test_a_json_tensor_far_larger_than_its_shape_is_refused_before_it_is_built(client):
    values = ",".join(["0.5"] * 1_000_000)
    body = (
        '{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [' + values + "]}]}"
    ).encode()
    response = client.post("/v2/models/blockdrop/infer", content=body)
    # 413 from the count of separators in the raw body: the million numbers are never parsed into objects
    assert response.status_code == 413
    assert "values" in _error(response)


def test_a_json_tensor_of_the_right_size_still_runs(client):
    body = {
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [2, 3, 32, 32], "data": [0.1] * (2 * 3 * 32 * 32)}]
    }
    response = client.post("/v2/models/blockdrop/infer", content=json.dumps(body))
    assert response.status_code == 200
    assert response.json()["outputs"][0]["shape"] == [2, 10]


# ---- property-based: every member of each class, not just the examples above ----------------------------------
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ROUTES = ["/v1/classify", "/v1/feedback", "/v2/models/blockdrop/infer", "/v2/models/default/infer", "/v1/explain"]


@FUZZ
@given(
    route=st.sampled_from(ROUTES),
    depth=st.integers(min_value=1, max_value=200_000),
    opener=st.sampled_from([b"[", b'{"a":', b'{"images":[']),
)
def test_fuzz_any_nesting_on_any_json_route_is_a_client_error(client, route, depth, opener):
    body = opener * depth
    response = client.post(route, content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, (route, depth, response.text[:200])


@FUZZ
@given(
    digits=st.integers(min_value=1, max_value=20_000),
    where=st.sampled_from(["top_k", "content-length", "header-length", "budget"]),
)
def test_fuzz_a_number_of_any_length_is_never_a_server_error(client, digits, where):
    number = "9" * digits
    path, headers, body = "/v1/classify", {"content-type": "image/png"}, png_bytes()
    if where == "top_k":
        path += f"?top_k={number}"
    elif where == "content-length":
        headers["content-length"] = number
    elif where == "budget":
        headers["x-compute-budget"] = "0." + number
    else:
        path, body = "/v2/models/blockdrop/infer", b"{}"
        headers = {"inference-header-content-length": number}
    response = client.post(path, content=body, headers=headers)
    assert response.status_code < 500, (where, digits, response.text[:200])


@FUZZ
@given(
    values=st.integers(min_value=64 * 3 * 32 * 32 + 2048, max_value=3_000_000),
    name=st.sampled_from(["images", "pixels"]),
)
def test_fuzz_a_json_tensor_larger_than_any_request_is_refused_unparsed(client, values, name):
    body = (
        b'{"inputs": [{"name": "'
        + name.encode()
        + b'", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": ['
        + b",".join([b"1"] * values)
        + b"]}]}"
    )
    response = client.post("/v2/models/blockdrop/infer", content=body)
    assert response.status_code == 413, response.text[:200]


@pytest.mark.parametrize("path", ["/", "/v1/classify", "/nope"])
def test_a_websocket_handshake_is_a_plain_404(client, path):
    """The service speaks no WebSocket: a handshake is told so, in its JSON error, not with an empty 403."""
    from starlette.testclient import WebSocketDenialResponse

    with (
        pytest.raises(WebSocketDenialResponse) as denied,
        client.websocket_connect(path, headers={"x-request-id": "ws-1"}),
    ):
        pass
    assert denied.value.status_code == 404
    assert denied.value.headers["x-request-id"] == "ws-1" and denied.value.headers["x-served-by"]  # as every answer
    assert denied.value.json() == {
        "error": f"no WebSocket at {path}: the service answers plain HTTP; its API is at /docs"
    }

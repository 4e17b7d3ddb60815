import numpy as np
import pytest
from PIL import Image

from service.imaging import ImagePreprocessor
from tests.service.conftest import png_bytes


def test_server_and_model_metadata(client):
    assert client.get("/v2").json()["name"] == "blockdrop-serving"
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/blockdrop").json()
    assert meta["inputs"][0] == {"name": "images", "datatype": "FP32", "shape": [-1, 3, 32, 32]}
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"logits": [-1, 10], "keep_mask": [-1, 3], "flops": [-1]}
    assert client.get("/v2/models/blockdrop/ready").json()["ready"] is True
    assert client.get("/v2/models/nope").status_code == 404


def test_the_versioned_routes_serve_the_advertised_version_and_refuse_others(client):
    """The metadata says each model has version "1"; a client that then asks for it by version (the protocol's
    /versions/{version} routes, as tritonclient's model_version does) gets the same answers, and any other version a
    404 that says which one is served (it was a bare "Not Found")."""
    assert client.get("/v2/models/blockdrop").json()["versions"] == ["1"]
    assert client.get("/v2/models/blockdrop/versions/1").json() == client.get("/v2/models/blockdrop").json()
    assert client.get("/v2/models/blockdrop/versions/1/ready").json()["ready"] is True
    tensor = {"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [7] * 3072}
    plain = client.post("/v2/models/blockdrop/infer", json={"inputs": [tensor]}).json()
    versioned = client.post("/v2/models/blockdrop/versions/1/infer", json={"inputs": [tensor]}).json()
    assert versioned == plain and versioned["model_version"] == "1"
    for path in ("/versions/2", "/versions/2/ready"):
        refused = client.get("/v2/models/blockdrop" + path)
        assert refused.status_code == 404 and "served as version 1" in refused.json()["error"]
    refused = client.post("/v2/models/blockdrop/versions/2/infer", json={"inputs": [tensor]})
    assert refused.status_code == 404 and "served as version 1" in refused.json()["error"]
    assert client.post("/v2/models/nope/versions/1/infer", json={"inputs": [tensor]}).status_code == 404


def _pixels(seed: int) -> np.ndarray:
    return np.asarray(Image.open(__import__("io").BytesIO(png_bytes(seed=seed))))


def test_uint8_and_fp32_inputs_match_v1(client, artifacts):
    pixels = np.stack([_pixels(1), _pixels(2)])  # [2, 32, 32, 3]
    body = {
        "id": "abc",
        "inputs": [
            {"name": "images", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.flatten().tolist()}
        ],
    }
    response = client.post("/v2/models/blockdrop/infer", json=body)
    assert response.status_code == 200
    out = {o["name"]: o for o in response.json()["outputs"]}
    assert response.json()["id"] == "abc" and out["logits"]["shape"] == [2, 10]
    v1 = [
        client.post(
            "/v1/classify?variant=blockdrop", content=png_bytes(seed=s), headers={"content-type": "image/png"}
        ).json()
        for s in (1, 2)
    ]
    logits = np.array(out["logits"]["data"]).reshape(2, 10)
    assert logits.argmax(1).tolist() == [r["prediction"]["class_id"] for r in v1]
    masks = np.array(out["keep_mask"]["data"]).reshape(2, 3)
    assert ["".join("1" if m else "0" for m in row) for row in masks] == [r["blocks"]["mask"] for r in v1]
    assert out["flops"]["data"] == [r["flops"]["executed"] for r in v1]

    from models.artifacts import read_manifest

    spec = read_manifest(artifacts["tiny-blockdrop"]).input
    fp32 = np.stack([ImagePreprocessor(spec, 10**6)(png_bytes(seed=s)).numpy() for s in (1, 2)])
    body = {
        "inputs": [{"name": "images", "datatype": "FP32", "shape": list(fp32.shape), "data": fp32.flatten().tolist()}],
        "outputs": [{"name": "logits"}],
    }
    response = client.post("/v2/models/blockdrop/infer", json=body)
    assert [o["name"] for o in response.json()["outputs"]] == ["logits"]
    assert np.allclose(np.array(response.json()["outputs"][0]["data"]).reshape(2, 10), logits, atol=1e-5)


def test_body_without_content_type_is_read_as_json(client):
    import json

    pixels = _pixels(3)[None]
    body = {
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": pixels.flatten().tolist()}]
    }
    response = client.post("/v2/models/full/infer", content=json.dumps(body).encode())
    assert response.status_code == 200


@pytest.mark.parametrize(
    "tensor, fragment",
    [
        ({"name": "images", "datatype": "FP16", "shape": [1, 3, 32, 32], "data": [0.0]}, "datatype must be"),
        ({"name": "images", "datatype": "FP32", "shape": [1, 3, 16, 16], "data": [0.0]}, "shape must be"),
        ({"name": "images", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 5}, "needs 3072"),
        ({"name": "images", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": "zeros"}, "inputs[0].data"),
        ({"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [300] * 3072}, "between 0 and 255"),
        ({"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [1.5] * 3072}, "whole numbers"),
    ],
)
def test_bad_tensors_get_400(client, tensor, fragment):
    response = client.post("/v2/models/full/infer", json={"inputs": [tensor]})
    assert response.status_code == 400 and fragment in response.json()["error"]


def test_binary_extension_and_bad_bodies_are_refused_clearly(client):
    response = client.post("/v2/models/full/infer", content=b"{}", headers={"Inference-Header-Content-Length": "9"})
    assert response.status_code == 400 and "says 9 bytes of JSON, but the body has 2" in response.json()["error"]
    assert client.post("/v2/models/full/infer", content=b"nope").status_code == 400
    assert client.post("/v2/models/full/infer", json={"inputs": []}).status_code == 400
    assert client.post("/v2/models/nope/infer", json={"inputs": []}).status_code == 404
    unknown = client.post(
        "/v2/models/full/infer",
        json={
            "inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}],
            "outputs": [{"name": "probs"}],
        },
    )
    assert unknown.status_code == 400 and "unknown output" in unknown.json()["error"]


def test_one_input_per_name_in_the_metadata(client):
    meta = client.get("/v2/models/blockdrop").json()
    assert meta["inputs"] == [
        {"name": "images", "datatype": "FP32", "shape": [-1, 3, 32, 32]},
        {"name": "pixels", "datatype": "UINT8", "shape": [-1, 32, 32, 3]},
    ]
    pixels = _pixels(4)[None]
    tensor = {"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": pixels.flatten().tolist()}
    as_pixels = client.post("/v2/models/full/infer", json={"inputs": [tensor]})
    as_images = client.post("/v2/models/full/infer", json={"inputs": [tensor | {"name": "images"}]})
    assert as_pixels.status_code == 200 and as_pixels.json()["outputs"] == as_images.json()["outputs"]
    wrong = client.post("/v2/models/full/infer", json={"inputs": [tensor | {"datatype": "FP32"}]})
    assert wrong.status_code == 400 and "'pixels' is UINT8" in wrong.json()["error"]
    unknown = client.post("/v2/models/full/infer", json={"inputs": [tensor | {"name": "image"}]})
    assert unknown.status_code == 400 and "must be 'images'" in unknown.json()["error"]


def _pixels_body(seed: int, **parameters) -> dict:
    pixels = _pixels(seed)[None]
    tensor = {"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": pixels.flatten().tolist()}
    return {"inputs": [tensor]} | ({"parameters": parameters} if parameters else {})


def test_the_virtual_model_routes_as_v1_does(client):
    """``default`` takes the A/B split: the same sticky key lands where /v1/classify puts it, an override wins,
    and the variant chosen is in the response's parameters and in the metrics."""
    assert client.get("/v2/models/default").json()["outputs"][1]["shape"] == [-1, 3]
    assert client.get("/v2/models/default/ready").json()["ready"] is True
    keys = [f"user-{i}" for i in range(20)]
    v1 = {
        key: client.post(
            "/v1/classify", content=png_bytes(seed=1), headers={"content-type": "image/png", "x-client-id": key}
        ).json()["variant"]
        for key in keys
    }
    assert set(v1.values()) == {"blockdrop", "full"}
    by_header = {
        key: client.post("/v2/models/default/infer", json=_pixels_body(1), headers={"x-client-id": key}).json()
        for key in keys
    }
    by_parameter = {
        key: client.post("/v2/models/default/infer", json=_pixels_body(1, client_id=key)).json() for key in keys
    }
    assert {k: r["parameters"]["variant"] for k, r in by_header.items()} == v1
    assert {k: r["parameters"]["variant"] for k, r in by_parameter.items()} == v1
    assert all(r["model_name"] == "default" for r in by_header.values())
    forced = client.post("/v2/models/default/infer", json=_pixels_body(1, variant="full", client_id="user-0"))
    assert forced.json()["parameters"]["variant"] == "full"
    by_variant = client.post("/v2/models/default/infer", json=_pixels_body(1), headers={"x-variant": "blockdrop"})
    assert by_variant.json()["parameters"]["variant"] == "blockdrop"
    bad = client.post("/v2/models/default/infer", json=_pixels_body(1, variant=3))
    assert bad.status_code == 400 and "parameters.variant must be a string" in bad.json()["error"]
    metrics = client.get("/metrics").text
    assert 'blockdrop_requests_total{status="200",variant="default"}' not in metrics

"""``POST /v1/explain``: the policy's keep-probabilities and the stage layout, consistent with what
``/v1/classify`` ran; plain variants answer with no probabilities; errors as for classify; nothing counted."""

from __future__ import annotations

import pytest
import torch

from tests.service.conftest import metric_on, png_bytes

PNG = {"content-type": "image/png"}


def explain(client, variant: str, body: bytes, **params):
    return client.post("/v1/explain", params={"variant": variant, **params}, content=body, headers=PNG)


@pytest.mark.parametrize("seed", range(4))
def test_the_probabilities_give_the_mask_classify_ran(client, seed):
    answer = explain(client, "blockdrop", png_bytes(seed=seed))
    assert answer.status_code == 200
    body = answer.json()
    served = client.post("/v1/classify?variant=blockdrop", content=png_bytes(seed=seed), headers=PNG).json()
    assert body["variant"] == "blockdrop" and body["model"] == "tiny-blockdrop"
    assert body["blocks"] == 3 and body["stages"] == [1, 1, 1]
    assert body["compute"]["threshold"] == served["compute"]["threshold"] == 0.5
    probabilities = body["keep_probabilities"]
    assert len(probabilities) == 3 and all(0 <= p <= 1 for p in probabilities)
    assert body["mask"] == "".join("1" if p >= 0.5 else "0" for p in probabilities) == served["blocks"]["mask"]


def test_the_probabilities_are_the_policys_own(client):
    """The same numbers as the loaded policy on the preprocessed image (the conftest policy keeps block 0 mostly
    and drops block 2 mostly)."""
    plane = client.app.state.plane
    variant = plane.variants["blockdrop"]
    image = plane.preprocessors["blockdrop"](png_bytes(seed=7))
    batch = image.unsqueeze(0).to(variant.device, memory_format=variant.memory_format)  # a GPU, where there is one
    with torch.inference_mode():
        expected = variant.model.policy(batch)[0].cpu().tolist()
    probabilities = explain(client, "blockdrop", png_bytes(seed=7)).json()["keep_probabilities"]
    assert probabilities == pytest.approx(expected, abs=1e-6)
    assert probabilities[0] > 0.5 > probabilities[2]


def test_a_plain_variant_has_no_probabilities(client):
    body = explain(client, "full", png_bytes()).json()
    assert body["keep_probabilities"] is None and body["mask"] is None
    assert body["compute"]["threshold"] is None and body["stages"] == [1, 1, 1]
    noted = explain(client, "full", png_bytes(), budget="fast").json()
    assert "ignored" in noted["compute"]["note"]


def test_explaining_is_not_an_inference_request(client):
    before = metric_on(client, "blockdrop_images_total", variant="blockdrop")
    for _ in range(3):
        explain(client, "blockdrop", png_bytes())
    assert metric_on(client, "blockdrop_images_total", variant="blockdrop") == before
    assert metric_on(client, "blockdrop_requests_total", variant="blockdrop", status="200") == 0


@pytest.mark.parametrize(
    ("params", "body", "headers", "status", "says"),
    [
        ({"variant": "nope"}, png_bytes(), PNG, 404, "unknown model 'nope'"),
        ({}, png_bytes(), PNG, 422, "variant"),
        ({"variant": "blockdrop"}, b"not an image", PNG, 415, "not an image"),
        ({"variant": "blockdrop"}, b"", PNG, 400, "empty"),
        ({"variant": "blockdrop"}, png_bytes()[:60], PNG, 400, "corrupt"),
        ({"variant": "blockdrop"}, b"{}", {"content-type": "application/json"}, 415, "not accepted"),
        # the tiny artifact has no calibrated curve to map a budget on
        ({"variant": "blockdrop", "budget": "fast"}, png_bytes(), PNG, 422, "calibrated"),
        ({"variant": "blockdrop", "budget": "2"}, png_bytes(), PNG, 422, "budget"),
    ],
)
def test_errors_say_what_to_fix(client, params, body, headers, status, says):
    answer = client.post("/v1/explain", params=params, content=body, headers=headers)
    assert answer.status_code == status
    assert says in answer.json()["error"]


def test_the_route_is_documented(client):
    operation = client.get("/openapi.json").json()["paths"]["/v1/explain"]["post"]
    assert set(operation["requestBody"]["content"]) >= {"image/png", "image/jpeg"}
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Explanation"
    }
    assert {"404", "415", "422"} <= set(operation["responses"])

import base64

import pytest

from models.classes import CIFAR10_CLASSES
from tests.service.conftest import png_bytes


def test_raw_png_gives_the_whole_response(client):
    response = client.post(
        "/v1/classify?variant=blockdrop&top_k=3", content=png_bytes(), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["variant"] == "blockdrop" and body["model"] == "tiny-blockdrop"
    assert len(body["request_id"]) == 32
    prediction = body["prediction"]
    assert 0 <= prediction["class_id"] < 10 and 0 < prediction["confidence"] <= 1
    assert body["top_k"][0] == prediction and len(body["top_k"]) == 3
    assert [p["confidence"] for p in body["top_k"]] == sorted((p["confidence"] for p in body["top_k"]), reverse=True)
    blocks = body["blocks"]
    assert blocks["total"] == 3 and blocks["used"] + blocks["skipped"] == 3
    assert len(blocks["mask"]) == 3 and blocks["mask"].count("1") == blocks["used"]
    flops = body["flops"]
    assert flops["executed"] > 0 and flops["ratio"] == pytest.approx(flops["executed"] / flops["full"], abs=1e-6)
    assert set(body["latency_ms"]) == {"total", "queue", "inference"}


def test_top_k_ranks_every_class_by_its_softmax_probability(client):
    body = client.post("/v1/classify?top_k=10", content=png_bytes(), headers={"content-type": "image/png"}).json()
    ranked = body["top_k"]
    assert sorted(p["class_id"] for p in ranked) == list(range(10))
    assert [p["confidence"] for p in ranked] == sorted((p["confidence"] for p in ranked), reverse=True)
    assert sum(p["confidence"] for p in ranked) == pytest.approx(1.0, abs=1e-5)
    assert all(p["label"] == CIFAR10_CLASSES[p["class_id"]] for p in ranked) and ranked[0] == body["prediction"]


def test_full_variant_runs_every_block(client):
    body = client.post(
        "/v1/classify", content=png_bytes(), headers={"content-type": "image/png", "x-variant": "full"}
    ).json()
    assert body["variant"] == "full" and body["blocks"]["mask"] == "111"
    assert body["flops"]["executed"] == body["flops"]["full"]


def test_multipart_and_json_batch(client):
    single = client.post("/v1/classify?variant=full", files={"file": ("x.png", png_bytes(seed=4), "image/png")})
    assert single.status_code == 200
    images = [base64.b64encode(png_bytes(seed=s)).decode() for s in (4, 5)]
    batch = client.post("/v1/classify?variant=full", json={"images": images, "top_k": 2})
    assert batch.status_code == 200
    results = batch.json()["results"]
    assert len(results) == 2 and len(results[0]["top_k"]) == 2
    assert results[0]["prediction"] == single.json()["prediction"]


def test_query_override_wins_over_header_and_client_key(client):
    body = client.post(
        "/v1/classify?variant=full",
        content=png_bytes(),
        headers={"content-type": "image/png", "x-variant": "blockdrop", "x-client-id": "k"},
    ).json()
    assert body["variant"] == "full"


@pytest.mark.parametrize(
    "kwargs, status, fragment",
    [
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty"),
        ({"content": b"this is text", "headers": {"content-type": "image/png"}}, 415, "not an image"),
        ({"content": png_bytes()[:60], "headers": {"content-type": "image/png"}}, 400, "corrupt or truncated"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "not accepted"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "not valid JSON"),
        ({"json": {"images": "nope"}}, 422, "invalid batch"),
        ({"json": {"images": ["***"]}}, 422, "not valid base64"),
        # a batch's image refused says which
        ({"json": {"images": [base64.b64encode(png_bytes()).decode(), ""]}}, 400, "images[1]: the image is empty"),
        ({"json": {"images": [base64.b64encode(b"text").decode()]}}, 415, "images[0]: not an image in a supported"),
        ({"files": {"other": ("x.png", b"123", "image/png")}}, 422, "field named 'file'"),
        ({"content": b"x", "headers": {"content-type": "multipart/form-data"}}, 400, "multipart body cannot be read"),
    ],
)
def test_bad_input_gets_a_clear_4xx(client, kwargs, status, fragment):
    response = client.post("/v1/classify?variant=full", **kwargs)
    assert response.status_code == status
    assert fragment in response.json()["error"]


def test_unknown_variant_is_404(client):
    response = client.post("/v1/classify?variant=nope", content=png_bytes(), headers={"content-type": "image/png"})
    assert response.status_code == 404 and "unknown variant 'nope'" in response.json()["error"]


def test_top_k_bounds(client):
    response = client.post("/v1/classify?top_k=11", content=png_bytes(), headers={"content-type": "image/png"})
    assert response.status_code == 422 and "top_k" in response.json()["error"]
    response = client.post("/v1/classify?top_k=0", content=png_bytes(), headers={"content-type": "image/png"})
    assert response.status_code == 422


def test_too_many_images_in_a_batch(artifacts):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.service.conftest import make_settings

    with TestClient(create_app(make_settings(artifacts, max_images_per_request=2))) as client:
        images = [base64.b64encode(png_bytes()).decode()] * 3
        response = client.post("/v1/classify", json={"images": images})
        assert response.status_code == 413 and "limit is 2" in response.json()["error"]


def test_body_over_the_limit_is_refused_before_reading(artifacts):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.service.conftest import make_settings

    with TestClient(create_app(make_settings(artifacts, max_body_bytes=1000))) as client:
        response = client.post("/v1/classify", content=b"\0" * 5000, headers={"content-type": "image/png"})
        assert response.status_code == 413 and "1000-byte limit" in response.json()["error"]

        def chunks():  # no Content-Length: the limit applies while streaming
            for _ in range(10):
                yield b"\0" * 500

        response = client.post("/v1/classify", content=chunks(), headers={"content-type": "image/png"})
        assert response.status_code == 413


def test_decompression_bomb_is_refused_from_the_header(client):
    # a 20000 x 20000 PNG compresses to a few hundred KB of zeros; the header alone must stop it
    import zlib

    width = height = 20000
    row = b"\0" + b"\0" * width  # filter byte + one grey byte per pixel
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    response = client.post("/v1/classify", content=bomb, headers={"content-type": "image/png"})
    assert response.status_code == 413 and "pixels" in response.json()["error"]


def test_models_listing(client):
    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["blockdrop", "full"]
    assert models[0]["blocks"] == 3 and models[0]["mode"] == "blockdrop" and models[0]["threshold"] == 0.5
    assert models[1]["threshold"] is None and models[0]["traffic_share"] == 0.5
    assert models[0]["flops"]["full"] > 0 and models[0]["flops"]["policy"] > 0
    # the defaults: fp32 (auto, bf16 on a GPU that has it, waits for a GPU run), the plain executor, no CUDA graphs
    assert all(m["precision"] == "fp32" for m in models)
    assert all(m["executor"] == "plain" and m["cuda_graphs"] is False for m in models)


def test_models_listing_says_whether_graphs_run_as_the_model_processes_report(client, monkeypatch):
    """Where worker processes (or model servers) run the model, they report whether they captured CUDA graphs (a
    failed capture runs without); /v1/models shows that rather than the setting loaded here."""
    from service.local_backend import LocalExecutor

    def listed() -> list[bool]:
        return [m["cuda_graphs"] for m in client.get("/v1/models").json()["models"]]

    monkeypatch.setattr(LocalExecutor, "graphs_in_use", property(lambda self: self.name == "blockdrop"))
    assert listed() == [True, False]
    monkeypatch.setattr(LocalExecutor, "graphs_in_use", property(lambda self: None))  # nobody reported: as loaded
    assert listed() == [False, False]


def test_the_graphs_state_of_several_workers_or_model_servers_is_theirs_together():
    from types import SimpleNamespace

    import numpy as np

    from service.local_backend import LocalExecutor
    from service.multiprocess import frames
    from service.multiprocess.model_client import ModelClient

    def local(*reports: bool | None) -> bool | None:
        executor = LocalExecutor.__new__(LocalExecutor)  # only its workers matter here
        executor.workers = [SimpleNamespace(cuda_graphs=report) for report in reports]
        return executor.graphs_in_use

    assert local() is None and local(None, None) is None
    assert local(True, None) is True and local(True, False) is False

    def served(*replicas: tuple[float, float]) -> bool | None:
        links = []
        for ready, graphs in replicas:
            status = np.zeros(frames.STATUS_FIELDS)
            status[frames.READY], status[frames.CUDA_GRAPHS] = ready, graphs
            links.append(SimpleNamespace(status=status))
        return ModelClient("v", links, np.zeros(1), 0, 8, 0.25, 1).graphs_in_use

    assert served((0.0, 1.0)) is None  # not ready yet: it has said nothing
    assert served((1.0, 1.0), (0.0, 0.0)) is True and served((1.0, 1.0), (1.0, 0.0)) is False


def test_health(client):
    assert client.get("/healthz/live").json() == {"status": "live"}
    assert client.get("/healthz/ready").json()["status"] == "ready"


def test_head_answers_as_get_without_the_body_wherever_get_is_served(client):
    for path in ("/healthz/ready", "/v1/models", "/metrics"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200 and head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert head.headers["x-request-id"] and head.headers["x-request-id"] != got.headers["x-request-id"]
    assert client.head("/v1/models").headers["content-length"] == client.get("/v1/models").headers["content-length"]
    # a path that takes no GET: the router's answer, as for any other method it does not take
    refused = client.head("/v1/classify")
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"
    assert client.head("/nope").status_code == 404
    # and a 405 on a path that takes GET names HEAD beside it
    posted = client.post("/healthz/ready")
    assert posted.status_code == 405 and posted.headers["allow"] == "GET, HEAD"
    assert posted.json() == {"error": "POST /healthz/ready is not allowed; /healthz/ready takes GET, HEAD"}


def test_unknown_route_and_method_are_json(client):
    assert client.get("/nope").json() == {"error": "nothing at GET /nope; the API is described at /docs"}
    wrong_method = client.get("/v1/classify")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json() == {"error": "GET /v1/classify is not allowed; /v1/classify takes POST"}


@pytest.mark.parametrize("artifact", ["tiny-slim", "tiny-biglittle"])
def test_static_variants_answer_through_the_service(artifacts, artifact):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import VariantSettings
    from tests.service.conftest import make_settings

    variants = [VariantSettings(name="static", artifact=artifacts[artifact], mode="full")]
    with TestClient(create_app(make_settings(artifacts, variants=variants))) as client:
        body = client.post("/v1/classify", content=png_bytes(), headers={"content-type": "image/png"}).json()
        assert body["variant"] == "static" and body["model"] == artifact
        assert set(body["blocks"]["mask"]) == {"1"} and body["blocks"]["skipped"] == 0
        full_flops = client.get("/v1/models").json()["models"][0]["flops"]["full"]
        assert body["flops"]["executed"] == full_flops


@pytest.mark.parametrize("kind", ["image/png", "application/json"])  # the fast path; the routed one
def test_a_request_that_arrived_before_draining_began_is_served_and_one_after_refused(client, kind):
    """Draining refuses new requests, not those in flight: a body still arriving when the pre-stop period ends
    belongs to a request whose headers came before."""
    plane, image = client.app.state.plane, png_bytes(seed=4)
    body = image if kind == "image/png" else b'{"images": ["%s"]}' % base64.b64encode(image)

    def body_during_which_draining_begins():
        yield body[:64]
        plane.begin_shutdown()
        yield body[64:]

    headers = {"content-type": kind}
    in_flight = client.post("/v1/classify", content=body_during_which_draining_begins(), headers=headers)
    assert in_flight.status_code == 200, in_flight.text
    after = client.post("/v1/classify", content=body, headers=headers)
    assert after.status_code == 503 and "shutting down" in after.json()["error"]
    assert after.headers["retry-after"] == "1"

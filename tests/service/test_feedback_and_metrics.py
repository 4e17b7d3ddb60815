import base64
import time

from fastapi.testclient import TestClient

from service.app import create_app
from service.feedback import PredictionStore
from tests.service.conftest import make_settings, metric_on, png_bytes


def _classify(client, variant: str, seed: int) -> dict:
    response = client.post(
        f"/v1/classify?variant={variant}", content=png_bytes(seed=seed), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200
    return response.json()


def test_metrics_move_exactly_as_the_requests_imply(client):
    before_executed = metric_on(client, "blockdrop_executed_flops_total", variant="blockdrop")
    bodies = [_classify(client, "blockdrop", seed) for seed in range(6)]
    images = [base64.b64encode(png_bytes(seed=s)).decode() for s in (10, 11, 12)]
    batch = client.post("/v1/classify?variant=blockdrop", json={"images": images}).json()["results"]
    bodies += batch
    executed = sum(b["flops"]["executed"] for b in bodies)
    assert metric_on(client, "blockdrop_executed_flops_total", variant="blockdrop") - before_executed == executed
    assert metric_on(client, "blockdrop_full_flops_total", variant="blockdrop") == sum(
        b["flops"]["full"] for b in bodies
    )
    assert metric_on(client, "blockdrop_images_total", variant="blockdrop") == 9
    assert metric_on(client, "blockdrop_requests_total", variant="blockdrop", status="200") == 7
    assert metric_on(client, "blockdrop_flops_per_image_count", variant="blockdrop") == 9
    assert metric_on(client, "blockdrop_flops_per_image_sum", variant="blockdrop") == executed
    skipped = sum(b["blocks"]["skipped"] for b in bodies)
    assert metric_on(client, "blockdrop_blocks_skipped_sum", variant="blockdrop") == skipped
    for block in range(3):
        ran = sum(b["blocks"]["mask"][block] == "1" for b in bodies)
        assert metric_on(client, "blockdrop_block_executions_total", variant="blockdrop", block=str(block)) == ran
    assert metric_on(client, "blockdrop_request_latency_seconds_count", variant="blockdrop") == 7
    assert metric_on(client, "blockdrop_queue_wait_seconds_count", variant="blockdrop") == 9
    assert metric_on(client, "blockdrop_queue_depth", variant="blockdrop") == 0


def test_error_statuses_are_counted(client):
    client.post("/v1/classify?variant=full", content=b"junk", headers={"content-type": "image/png"})
    client.post("/v1/classify?variant=missing", content=b"junk", headers={"content-type": "image/png"})
    assert metric_on(client, "blockdrop_requests_total", variant="full", status="415") == 1
    assert metric_on(client, "blockdrop_requests_total", variant="none", status="404") == 1


def test_model_info_and_series_exist_before_traffic(client):
    assert (
        metric_on(
            client,
            "blockdrop_model_info",
            variant="blockdrop",
            model="tiny-blockdrop",
            kind="blockdrop",
            mode="blockdrop",
            threshold="0.5",
            blocks="3",
        )
        == 1
    )
    assert "blockdrop_flops_per_image_bucket{" in client.get("/metrics").text


def test_feedback_counts_right_and_wrong_once_per_request(client):
    served = _classify(client, "full", 1)
    predicted = served["prediction"]["class_id"]
    right = client.post("/v1/feedback", json={"request_id": served["request_id"], "label": predicted})
    assert right.status_code == 200 and right.json()["correct"] is True
    again = client.post("/v1/feedback", json={"request_id": served["request_id"], "label": predicted})
    assert again.status_code == 404
    other = _classify(client, "full", 2)
    label_name = ["airplane", "automobile"][other["prediction"]["class_id"] == 0]
    wrong = client.post("/v1/feedback", json={"request_id": other["request_id"], "label": label_name})
    assert wrong.json()["correct"] is (other["prediction"]["label"] == label_name)
    assert metric_on(client, "blockdrop_feedback_total", variant="full", outcome="right") == 1 + wrong.json()["correct"]
    assert metric_on(client, "blockdrop_feedback_total", variant="full", outcome="wrong") == 1 - wrong.json()["correct"]


def test_feedback_errors(client):
    assert client.post("/v1/feedback", json={"request_id": "nope", "label": 1}).status_code == 404
    served = _classify(client, "full", 3)
    bad = client.post("/v1/feedback", json={"request_id": served["request_id"], "label": 99})
    assert bad.status_code == 422 and "out of range" in bad.json()["error"]
    bad = client.post("/v1/feedback", json={"request_id": served["request_id"], "label": "unicorn"})
    assert bad.status_code == 422
    malformed = client.post("/v1/feedback", content=b"{", headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and "error" in malformed.json()


def test_prediction_store_is_bounded_in_count_and_age():
    now = [0.0]
    store = PredictionStore(capacity=2, ttl_s=10, clock=lambda: now[0])
    for key in "abc":
        store.add(key, "v", 1)
    assert store.get("a") is None and len(store) == 2  # evicted, oldest first
    assert store.get("b").class_id == 1
    store.take("b")
    assert store.get("b") is None  # feedback once
    now[0] = 11
    assert store.get("c") is None  # expired


def test_shadow_runs_after_answering_and_counts_agreement(artifacts):
    settings = make_settings(artifacts, shadow_variant="full", shadow_fraction=1.0)
    with TestClient(create_app(settings)) as client:
        for seed in range(4):
            _classify(client, "blockdrop", seed)

        def compared() -> float:
            return sum(
                metric_on(client, "blockdrop_shadow_comparisons_total", variant="blockdrop", shadow="full", outcome=o)
                for o in ("agree", "disagree")
            )

        # Shadows run after the answer is sent, so the last one may still be in flight: wait for it.
        deadline = time.monotonic() + 30
        while compared() < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert compared() == 4

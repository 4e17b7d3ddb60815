"""Rollouts on a live ``blockdrop serve`` of the shipped checkpoints, with nobody acting after the start: the shipped
``blockdrop`` fed the true labels of the sample images (the first CIFAR-10 test image of each class) ramps through
every step to 100 %; ``slim`` fed shuffled labels (each image's feedback names another image's class) is rolled
back and its traffic returned to the baseline. The controller looks every 0.1 s; small steps keep it quick."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service.config import CHECKPOINTS
from tests.service.live_server import Server

SAMPLES = Path(__file__).resolve().parents[2] / "service" / "samples"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGES = [(SAMPLES / f"{name}.png").read_bytes() for name in CLASSES]
TOKEN = "e2e-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLAN = {
    "steps": [1, 5, 25, 50, 100],
    "min_feedback": 20,
    "accuracy_margin": 0.2,
    "max_latency_ratio": None,  # latency on a shared test machine is noise; the unit tests cover it
    "max_error_rate": 0.2,
}
MAX_ROUNDS = 600


@pytest.fixture
def server(tmp_path):
    variants = [
        {"name": "blockdrop", "artifact": str(CHECKPOINTS / "cifar10-resnet32-blockdrop"), "mode": "blockdrop"},
        {"name": "full", "artifact": str(CHECKPOINTS / "cifar10-resnet32-e200"), "mode": "full"},
        {"name": "slim", "artifact": str(CHECKPOINTS / "cifar10-resnet32-slim"), "mode": "full"},
    ]
    running = Server(
        variants,
        admin_token=TOKEN,
        state_dir=tmp_path / "state",
        rollout_interval_s=0.1,
        inference_workers="thread",
    )
    yield running
    assert running.stop()


def give_feedback(client: httpx.Client, variant: str, image: int, label: int) -> None:
    served = client.post(
        "/v1/classify", content=IMAGES[image], headers={"X-Variant": variant, "Content-Type": "image/png"}
    )
    assert served.status_code == 200, served.text
    answer = client.post("/v1/feedback", json={"request_id": served.json()["request_id"], "label": label})
    assert answer.status_code == 200, answer.text


def feed_until_over(client: httpx.Client, variant: str, shuffled: bool) -> dict:
    """Feedback on the variant and the baseline in turns until the rollout is over (at most MAX_ROUNDS rounds)."""
    for round_ in range(MAX_ROUNDS):
        image = round_ % len(IMAGES)
        label = (image + 1) % len(IMAGES) if shuffled else image
        give_feedback(client, variant, image, label)
        give_feedback(client, "full", image, image)
        rollout = client.get(f"/v1/rollouts/{variant}").json()
        if rollout["status"] not in ("running", "paused"):
            return rollout
    return rollout


def test_a_good_variant_ramps_to_100_percent_on_its_own(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        started = client.put("/v1/rollouts/blockdrop", json=PLAN, headers=AUTH)
        assert started.status_code == 200, started.text
        assert client.get("/v1/variants/blockdrop").json()["traffic_share"] == pytest.approx(0.01)
        rollout = feed_until_over(client, "blockdrop", shuffled=False)
        assert (rollout["status"], rollout["share"]) == ("completed", 100), rollout["reasons"]
        actions = [(entry["action"], entry["share"]) for entry in rollout["history"]]
        assert actions == [("start", 1), ("advance", 5), ("advance", 25), ("advance", 50), ("complete", 100)]
        assert client.get("/v1/variants/blockdrop").json()["traffic_share"] == 1.0
        assert client.get("/v1/variants/full").json()["traffic_share"] == 0.0
        metrics = client.get("/metrics").text
        assert 'blockdrop_rollout_decisions_total{decision="advance",variant="blockdrop"} 3.0' in metrics
        assert 'blockdrop_rollout_decisions_total{decision="complete",variant="blockdrop"} 1.0' in metrics
        assert 'blockdrop_rollout_share{variant="blockdrop"} 1.0' in metrics


def test_a_bad_variant_is_rolled_back_and_its_traffic_returned_to_the_baseline(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.put("/v1/rollouts/slim", json=PLAN, headers=AUTH).status_code == 200
        rollout = feed_until_over(client, "slim", shuffled=True)
        assert rollout["status"] == "rolled_back" and rollout["share"] == 0
        assert rollout["history"][-1]["reasons"] == ["accuracy violated"]
        assert rollout["evidence"]["variant"]["feedback"] < 100  # at once, not after the steps' feedback
        assert client.get("/v1/variants/slim").json()["traffic_share"] == 0.0
        shares = {name: client.get(f"/v1/variants/{name}").json()["traffic_share"] for name in ("full", "blockdrop")}
        assert shares == {"full": pytest.approx(0.5), "blockdrop": pytest.approx(0.5)}  # the weights before it
        metrics = client.get("/metrics").text
        assert 'blockdrop_rollout_decisions_total{decision="rollback",variant="slim"} 1.0' in metrics

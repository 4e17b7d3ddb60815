"""``/v1/rollouts`` in an app: the admin token on every change, starting, pausing, resuming and aborting, the
controller's ticks on real feedback, and the state surviving a restart of the app."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import make_settings, png_bytes

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLAN = {
    "steps": [10, 50, 100],
    "min_feedback": 20,
    "accuracy_margin": 0.3,
    "max_latency_ratio": None,
    "max_error_rate": 0.3,
}
CHANGES = [
    ("put", "/v1/rollouts/blockdrop"),
    ("post", "/v1/rollouts/blockdrop/pause"),
    ("post", "/v1/rollouts/blockdrop/resume"),
    ("post", "/v1/rollouts/blockdrop/abort"),
]


@pytest.fixture
def rollout_settings(artifacts, tmp_path):
    # a controller that never ticks on its own after the first look: the tests tick it
    return make_settings(artifacts, admin_token=TOKEN, state_dir=tmp_path / "state", rollout_interval_s=3600)


@pytest.fixture
def client(rollout_settings):
    with TestClient(create_app(rollout_settings)) as test_client:
        yield test_client


def tick(client: TestClient) -> dict:
    client.portal.call(client.app.state.rollouts.tick)
    return client.get("/v1/rollouts/blockdrop").json()


def share(client: TestClient, variant: str) -> float:
    return client.get(f"/v1/variants/{variant}").json()["traffic_share"]


def serve_with_feedback(client: TestClient, variant: str, rounds: int, right: bool = True) -> None:
    for seed in range(rounds):
        served = client.post(
            "/v1/classify", content=png_bytes(seed=seed), headers={"X-Variant": variant, "Content-Type": "image/png"}
        ).json()
        predicted = served["prediction"]["class_id"]
        label = predicted if right else (predicted + 1) % 10
        assert client.post("/v1/feedback", json={"request_id": served["request_id"], "label": label}).status_code == 200


@pytest.mark.parametrize(("method", "path"), CHANGES)
def test_every_change_needs_the_admin_token(client, method, path):
    body = {"json": PLAN} if method == "put" else {}
    missing = getattr(client, method)(path, **body)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = getattr(client, method)(path, headers={"Authorization": "Bearer nope"}, **body)
    assert wrong.status_code == 401
    assert client.get("/v1/rollouts").json() == []  # nothing started or changed
    assert share(client, "blockdrop") == 0.5


@pytest.mark.parametrize(("method", "path"), CHANGES)
def test_without_an_admin_token_set_the_change_routes_do_not_exist(artifacts, tmp_path, method, path):
    settings = make_settings(artifacts, state_dir=tmp_path / "state")
    with TestClient(create_app(settings)) as client:
        answer = getattr(client, method)(path, headers=AUTH, **({"json": PLAN} if method == "put" else {}))
        assert answer.status_code == 404


def test_start_sets_the_first_step_and_refuses_a_second_start(client):
    started = client.put("/v1/rollouts/blockdrop", json=PLAN, headers=AUTH)
    assert started.status_code == 200, started.text
    rollout = started.json()
    assert (rollout["status"], rollout["share"], rollout["baseline"]) == ("running", 10, "full")
    assert share(client, "blockdrop") == pytest.approx(0.1) and share(client, "full") == pytest.approx(0.9)
    assert client.put("/v1/rollouts/blockdrop", json=PLAN, headers=AUTH).status_code == 409
    assert client.get("/v1/rollouts").json()[0]["variant"] == "blockdrop"
    assert 'blockdrop_rollout_decisions_total{decision="start",variant="blockdrop"} 1.0' in client.get("/metrics").text


def test_start_refusals(client):
    assert client.put("/v1/rollouts/nope", json=PLAN, headers=AUTH).status_code == 404
    against_itself = client.put("/v1/rollouts/full", json=PLAN | {"baseline": "full"}, headers=AUTH)
    assert against_itself.status_code == 422
    assert client.put("/v1/rollouts/blockdrop", json=PLAN | {"steps": [50, 10]}, headers=AUTH).status_code == 422
    assert client.get("/v1/rollouts/blockdrop").status_code == 404
    assert client.post("/v1/rollouts/blockdrop/pause", headers=AUTH).status_code == 404


def test_pause_resume_and_abort(client):
    before = {name: share(client, name) for name in ("blockdrop", "full")}
    assert before["blockdrop"] > 0
    client.put("/v1/rollouts/blockdrop", json=PLAN, headers=AUTH)
    assert share(client, "blockdrop") == pytest.approx(0.1)
    assert client.post("/v1/rollouts/blockdrop/resume", headers=AUTH).status_code == 409  # not paused
    assert client.post("/v1/rollouts/blockdrop/pause", headers=AUTH).json()["status"] == "paused"
    serve_with_feedback(client, "blockdrop", 25)
    serve_with_feedback(client, "full", 25)
    assert tick(client)["share"] == 10  # paused: no step, whatever the evidence
    assert client.post("/v1/rollouts/blockdrop/resume", headers=AUTH).json()["status"] == "running"
    aborted = client.post("/v1/rollouts/blockdrop/abort", headers=AUTH).json()
    assert (aborted["status"], aborted["share"]) == ("aborted", 0)  # the rollout gives it nothing now; the
    assert {name: share(client, name) for name in ("blockdrop", "full")} == before  # weights are as it found them
    assert [entry["action"] for entry in aborted["history"]] == ["start", "pause", "resume", "abort"]
    assert client.post("/v1/rollouts/blockdrop/abort", headers=AUTH).status_code == 409
    # a finished rollout may be started again
    assert client.put("/v1/rollouts/blockdrop", json=PLAN, headers=AUTH).json()["history"][0]["action"] == "start"


def test_the_controller_advances_on_good_feedback_and_rolls_back_on_bad(client):
    client.put("/v1/rollouts/blockdrop", json=PLAN, headers=AUTH)
    rollout = tick(client)
    assert rollout["share"] == 10 and rollout["reasons"] == ["0 of 20 feedback in this step"]
    serve_with_feedback(client, "blockdrop", 40)
    serve_with_feedback(client, "full", 40)
    rollout = tick(client)
    assert rollout["share"] == 50, rollout["reasons"]
    assert share(client, "blockdrop") == pytest.approx(0.5)
    serve_with_feedback(client, "blockdrop", 120, right=False)
    rollout = tick(client)
    assert (rollout["status"], rollout["share"]) == ("rolled_back", 0), rollout["checks"]
    assert rollout["history"][-1]["reasons"] == ["accuracy violated"]
    assert share(client, "blockdrop") == 0 and share(client, "full") == 1
    metrics = client.get("/metrics").text
    assert 'blockdrop_rollout_decisions_total{decision="rollback",variant="blockdrop"} 1.0' in metrics
    assert 'blockdrop_rollout_share{variant="blockdrop"} 0.0' in metrics


def test_a_rollout_survives_a_restart(rollout_settings):
    with TestClient(create_app(rollout_settings)) as client:
        client.put("/v1/rollouts/blockdrop", json=PLAN, headers=AUTH)
        serve_with_feedback(client, "blockdrop", 40)
        serve_with_feedback(client, "full", 40)
        before = tick(client)
        assert before["share"] == 50
    with TestClient(create_app(rollout_settings)) as client:
        after = tick(client)
        assert (after["status"], after["share"]) == ("running", 50)
        assert after["evidence"]["variant"]["feedback"] == before["evidence"]["variant"]["feedback"] == 40
        assert [entry["action"] for entry in after["history"]] == ["start", "advance"]
        assert share(client, "blockdrop") == pytest.approx(0.5)  # the new process follows the stored step
        serve_with_feedback(client, "blockdrop", 10)
        assert tick(client)["evidence"]["variant"]["feedback"] == 50  # new counts add to the stored ones


def test_the_weights_the_last_ended_rollout_left_survive_a_restart_unless_the_settings_changed(rollout_settings):
    with TestClient(create_app(rollout_settings)) as client:
        assert client.put("/v1/rollouts/blockdrop", json=PLAN | {"steps": [50, 100]}, headers=AUTH).status_code == 200
        serve_with_feedback(client, "blockdrop", 40)
        serve_with_feedback(client, "full", 40)
        assert tick(client)["status"] == "completed"
    with TestClient(create_app(rollout_settings)) as client:
        assert share(client, "blockdrop") == 1  # completed: it keeps all the traffic
        assert 'blockdrop_rollout_share{variant="blockdrop"} 1.0' in client.get("/metrics").text
        assert client.put("/v1/rollouts/blockdrop", json=PLAN | {"steps": [50, 100]}, headers=AUTH).status_code == 200
        serve_with_feedback(client, "blockdrop", 120, right=False)
        serve_with_feedback(client, "full", 40)
        assert tick(client)["status"] == "rolled_back"
        assert share(client, "blockdrop") == 0
    with TestClient(create_app(rollout_settings)) as client:
        assert share(client, "blockdrop") == 0  # rolled back last: it stays out
    variants = [
        v.model_copy(update={"weight": 2.0 if v.name == "blockdrop" else 1.0}) for v in rollout_settings.variants
    ]
    with TestClient(create_app(rollout_settings.model_copy(update={"variants": variants}))) as client:
        assert share(client, "blockdrop") == pytest.approx(2 / 3)  # weights set in the settings since win


def test_an_operator_change_after_a_rollout_ends_stands_in_every_process(rollout_settings):
    """Two processes sharing the rollout store and the operator's changes (as API servers or Ray ingress replicas
    do): the one that ends the rollout sets the final weights and shares them; the other, ticking later, must not set
    them again over a change the operator made in between (on Ray this left `full` at weight 0 for good)."""
    with TestClient(create_app(rollout_settings)) as first, TestClient(create_app(rollout_settings)) as second:
        second.app.state.rollouts.instance = "second"  # one pid here: as two processes, each adds its own counts
        one, other = first.app.state.plane, second.app.state.plane
        one.on_update = lambda name, change: other.apply_changes({name: change})
        other.on_update = lambda name, change: one.apply_changes({name: change})
        assert first.put("/v1/rollouts/blockdrop", json=PLAN | {"steps": [50, 100]}, headers=AUTH).status_code == 200
        assert tick(second)["share"] == 50 and share(second, "blockdrop") == pytest.approx(0.5)
        serve_with_feedback(first, "blockdrop", 40)
        serve_with_feedback(first, "full", 40)
        assert tick(first)["status"] == "completed"
        assert share(second, "blockdrop") == 1  # shared by the process that ended it
        assert second.put("/v1/variants/full", json={"weight": 1.0}, headers=AUTH).status_code == 200
        tick(second)
        tick(first)
        assert [client.get("/v1/variants/full").json()["weight"] for client in (first, second)] == [1.0, 1.0]


def test_a_decision_read_from_a_process_finds_that_process_weights_already_set(client):
    """The store holds a decision a moment before the deciding process has set its weights; a reader of that
    process waits for them, so a client that reads "advanced to 50 %" from it also finds the 50 % there."""
    assert client.put("/v1/rollouts/blockdrop", json=PLAN, headers=AUTH).status_code == 200
    serve_with_feedback(client, "blockdrop", 40)
    serve_with_feedback(client, "full", 40)
    driver = client.app.state.rollouts
    committed, release = threading.Event(), threading.Event()
    update = driver.store.update

    def update_then_pause(variant, change):  # the tick's thread, held after its commit
        stored = update(variant, change)
        committed.set()
        release.wait(10)
        return stored

    driver.store.update = update_then_pause
    ticking = client.portal.start_task_soon(driver.tick)
    assert committed.wait(10)
    reading = client.portal.start_task_soon(driver.get, "blockdrop")
    time.sleep(0.3)
    assert not reading.done()  # the decision is stored, but this process has not followed it yet
    release.set()
    assert reading.result(10)["share"] == 50 and share(client, "blockdrop") == pytest.approx(0.5)
    ticking.result(10)
